"""Region encoder (input side): a box or mask the user points at -> one LM input embedding.

Geometry: the region's mask and the mask head's per-pixel features are cropped inside the
region's box (grown by ``roi_context``) to ``roi_size`` x ``roi_size`` and read by a small conv
net, so a small object's shape is as visible as a large one's; the box itself (position, size)
goes through an MLP. Appearance: the per-pixel features averaged inside the mask. The sum replaces
the ``<region>`` token's input embedding. A click arrives as the mask ``segment_point`` gives it; a
box region as its filled box. (The whole-frame variant of earlier stages is at commit 96775cc.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perception.geometry import context_boxes, roi_crop


class RegionEncoder(nn.Module):
    def __init__(self, cfg, lm_dim: int, feat_dim: int):
        super().__init__()
        h = cfg.hidden
        self.cfg = cfg
        self.box_mlp = nn.Sequential(nn.Linear(4, h), nn.GELU(), nn.Linear(h, lm_dim))
        self.roi_cnn = nn.Sequential(
            nn.Conv2d(1 + feat_dim, h, 3, 1, 1), nn.GELU(), nn.Conv2d(h, h, 3, 2, 1), nn.GELU(),
            nn.Conv2d(h, h, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(4 * h, h), nn.GELU(), nn.Linear(h, lm_dim),
        )
        self.appearance = nn.Sequential(nn.Linear(feat_dim, h), nn.GELU(), nn.Linear(h, lm_dim))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Encode R regions.

        boxes:  (R, 4) normalised model-frame corners (for masks: their tight box).
        masks:  (R, M, M) float in [0, 1], model frame (for boxes: the filled box).
        pixels: (R, C, h, w) the mask head's per-pixel features of each region's image.
        Returns (R, D_lm).
        """
        m = F.interpolate(masks[:, None].float(), size=pixels.shape[-2:], mode="area")
        pooled = (pixels.float() * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1e-3)
        crop_box = context_boxes(boxes.float(), self.cfg.roi_context)
        s = self.cfg.roi_size
        crops = torch.cat([roi_crop(masks[:, None], crop_box, s), roi_crop(pixels, crop_box, s)], 1)
        return self.box_mlp(boxes.float()) + self.roi_cnn(crops) + self.appearance(pooled)
