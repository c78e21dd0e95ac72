"""Region encoder (input side): a box or mask the user points at -> one LM input embedding.

Geometry: a box through an MLP, a mask through a small conv net (a click arrives as the mask
``segment_point`` gives it). Appearance: the mask head's per-pixel features averaged inside the
region. The sum replaces the ``<region>`` token's input embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RegionEncoder(nn.Module):
    def __init__(self, cfg, lm_dim: int, feat_dim: int):
        super().__init__()
        h = cfg.hidden
        self.mask_size = cfg.mask_size
        self.box_mlp = nn.Sequential(nn.Linear(4, h), nn.GELU(), nn.Linear(h, lm_dim))
        self.mask_cnn = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, 32, 3, 2, 1), nn.GELU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, h), nn.GELU(), nn.Linear(h, lm_dim),
        )
        self.appearance = nn.Sequential(nn.Linear(feat_dim, h), nn.GELU(), nn.Linear(h, lm_dim))

    def forward(self, is_box: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Encode R regions.

        is_box: (R,) bool — box regions use the box MLP, the rest the mask net.
        boxes:  (R, 4) normalised model-frame corners (for masks: their tight box).
        masks:  (R, M, M) float in [0, 1], model frame (for boxes: the filled box).
        pixels: (R, C, h, w) the mask head's per-pixel features of each region's image.
        Returns (R, D_lm).
        """
        m = F.interpolate(masks[:, None].float(), size=pixels.shape[-2:], mode="area")
        pooled = (pixels.float() * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1e-3)
        geom_box = self.box_mlp(boxes.float())
        geom_mask = self.mask_cnn(F.interpolate(masks[:, None].float(), size=(self.mask_size,) * 2, mode="area"))
        geom = torch.where(is_box[:, None], geom_box, geom_mask)
        return geom + self.appearance(pooled)
