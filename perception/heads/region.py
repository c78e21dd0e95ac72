"""Region encoder (input side): a box or mask the user points at -> one LM input embedding.

Two geometry paths (``RegionEncoderConfig.mode``):
- ``"roi"`` (default): the region's mask and the mask head's per-pixel features are cropped inside
  the region's box (grown by ``roi_context``) to ``roi_size`` x ``roi_size`` and read by a small
  conv net, so a small object's shape is as visible as a large one's; the box itself (position,
  size) goes through an MLP.
- ``"frame"``: boxes through the MLP, masks through a conv net over the whole frame at
  ``mask_size`` (a small object is a few pixels there: shape is lost).
Appearance: the per-pixel features averaged inside the mask, in both modes. The sum replaces the
``<region>`` token's input embedding. A click arrives as the mask ``segment_point`` gives it.
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
        if cfg.mode not in ("roi", "frame"):
            raise ValueError(f"region.mode must be 'roi' or 'frame', got {cfg.mode!r}")
        self.box_mlp = nn.Sequential(nn.Linear(4, h), nn.GELU(), nn.Linear(h, lm_dim))
        if cfg.mode == "frame":
            self.mask_cnn = nn.Sequential(
                nn.Conv2d(1, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, 32, 3, 2, 1), nn.GELU(),
                nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                nn.Linear(256, h), nn.GELU(), nn.Linear(h, lm_dim),
            )
        else:
            self.roi_cnn = nn.Sequential(
                nn.Conv2d(1 + feat_dim, h, 3, 1, 1), nn.GELU(), nn.Conv2d(h, h, 3, 2, 1), nn.GELU(),
                nn.Conv2d(h, h, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                nn.Linear(4 * h, h), nn.GELU(), nn.Linear(h, lm_dim),
            )
        self.appearance = nn.Sequential(nn.Linear(feat_dim, h), nn.GELU(), nn.Linear(h, lm_dim))

    def forward(self, is_box: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Encode R regions.

        is_box: (R,) bool — "frame" mode: box regions use the box MLP, the rest the mask net.
        boxes:  (R, 4) normalised model-frame corners (for masks: their tight box).
        masks:  (R, M, M) float in [0, 1], model frame (for boxes: the filled box).
        pixels: (R, C, h, w) the mask head's per-pixel features of each region's image.
        Returns (R, D_lm).
        """
        m = F.interpolate(masks[:, None].float(), size=pixels.shape[-2:], mode="area")
        pooled = (pixels.float() * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1e-3)
        geom_box = self.box_mlp(boxes.float())
        if self.cfg.mode == "frame":
            side = (self.cfg.mask_size,) * 2
            geom_mask = self.mask_cnn(F.interpolate(masks[:, None].float(), size=side, mode="area"))
            geom = torch.where(is_box[:, None], geom_box, geom_mask)
        else:
            crop_box = context_boxes(boxes.float(), self.cfg.roi_context)
            s = self.cfg.roi_size
            crops = torch.cat([roi_crop(masks[:, None], crop_box, s), roi_crop(pixels, crop_box, s)], 1)
            geom = geom_box + self.roi_cnn(crops)
        return geom + self.appearance(pooled)
