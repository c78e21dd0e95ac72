"""The paper's box head: an MLP from the perception-token state to a normalised box."""

from __future__ import annotations

import torch
from torch import nn

from perception.geometry import cxcywh_to_xyxy


class BoxHead(nn.Module):
    """(K, D) perception-token states -> (K, 4) boxes, corners in the normalised model frame."""

    SOURCES = ("mask", "head")  # BoxHeadConfig.source: which box an answer reports

    def __init__(self, cfg, lm_dim: int):
        super().__init__()
        if cfg.source not in self.SOURCES:
            raise ValueError(f"box_head.source must be one of {self.SOURCES}; got {cfg.source!r}")
        dims = [lm_dim] + [cfg.hidden] * (cfg.layers - 1)
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], 4))
        self.mlp = nn.Sequential(*layers)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return cxcywh_to_xyxy(self.mlp(states.float()).sigmoid())
