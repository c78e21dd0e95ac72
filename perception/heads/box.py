"""The paper's box head: an MLP from the perception-token state to a normalised box."""

from __future__ import annotations

import torch
from torch import nn

from perception.geometry import cxcywh_to_xyxy


class BoxHead(nn.Module):
    """(K, D) perception-token states -> (K, 4) boxes, corners in the normalised model frame."""

    def __init__(self, cfg, lm_dim: int):
        super().__init__()
        dims = [lm_dim] + [cfg.hidden] * (cfg.layers - 1)
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], 4))
        self.mlp = nn.Sequential(*layers)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return cxcywh_to_xyxy(self.mlp(states.float()).sigmoid())
