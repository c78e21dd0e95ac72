"""User regions in the form the model reads: ``Regions``, built in one place for training and inference.

A ``perception.Region`` (input-image pixels: a point, a box or a mask) becomes one row of
``Regions`` in the *normalised model frame* (perception.geometry.ImageFrame): its box corners, its
mask rasterised at ``side`` x ``side``, and its point. A point's mask is left empty here: the model
fills it through the mask head's click path (``PerceptionModel.encode_regions``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from perception.geometry import ImageFrame, box_from_mask


@dataclass
class Regions:
    """R regions of a batch (model frame).

    bidx:     (R,) long, the batch row (image) each region belongs to.
    is_point: (R,) bool, a click (its mask comes from the click path).
    boxes:    (R, 4) float normalised corners (a mask's tight box; zeros for a point).
    masks:    (R, side, side) float in [0, 1] (a box filled; empty for a point).
    points:   (R, 2) float normalised (x, y) (zeros unless a point).
    use_mask: (R,) bool or None; training only: a point keeps the given (true) mask instead of the click path's.
    """

    bidx: torch.Tensor
    is_point: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    points: torch.Tensor
    use_mask: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.bidx.shape[0])

    def to(self, device) -> "Regions":
        return Regions(**{k: (None if v is None else v.to(device)) for k, v in self.__dict__.items()})

    def replace(self, **kw) -> "Regions":
        return replace(self, **kw)

    @classmethod
    def build(cls, items: list, side: int, teacher_masks: Optional[list] = None) -> Optional["Regions"]:
        """items: [(region: perception.Region, frame: ImageFrame, batch row)] in placeholder order.

        teacher_masks: optional, one per item: an (H, W) bool true mask that replaces a point's
        click-path mask (training's teacher forcing), or None. Returns None when ``items`` is empty.
        """
        if not items:
            return None
        rows = [region_geometry(r, frame, side) for r, frame, _ in items]
        use = [False] * len(items)
        for i, m in enumerate(teacher_masks or []):
            if m is not None and items[i][0].kind == "point":
                rows[i]["masks"] = items[i][1].mask_to_model(m, side)
                use[i] = True
        return cls(
            bidx=torch.tensor([b for _, _, b in items], dtype=torch.long),
            is_point=torch.tensor([r["is_point"] for r in rows], dtype=torch.bool),
            boxes=torch.stack([r["boxes"] for r in rows]),
            masks=torch.stack([r["masks"] for r in rows]),
            points=torch.stack([r["points"] for r in rows]),
            use_mask=torch.tensor(use, dtype=torch.bool) if teacher_masks is not None else None,
        )


@dataclass
class RegionEmbeds:
    """The encoded regions of a prompt or batch (``PerceptionModel.encode_regions``), in row-major
    ``<region>`` placeholder order.

    vectors: (R, D) the embeddings that stand in the ``<region>`` placeholders.
    boxes:   (R, 4) float normalised model-frame corners of what each embedding encodes (a click's:
             its mask's tight box), for features that compare a region with the image's objects by
             place (``objects.region_overlap``).
    """

    vectors: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def region_geometry(region, frame: ImageFrame, side: int) -> dict:
    """A Region in pixels -> {"is_point", "boxes" (4,), "masks" (side, side), "points" (2,)} in the
    normalised model frame; a box's mask is the filled box, a point's mask is left empty."""
    point = torch.zeros(2)
    if region.kind == "box":
        box = frame.boxes_to_model(region.box)
        mask = box_mask(box, side)
    elif region.kind == "mask":
        mask = frame.mask_to_model(region.mask, side)
        tb = box_from_mask(region.mask)
        box = frame.boxes_to_model(tb) if tb else np.zeros(4)
    else:
        mask = torch.zeros(side, side)
        box = np.zeros(4)
        point = torch.tensor(frame.points_to_model(region.point), dtype=torch.float32)
    return {
        "is_point": region.kind == "point",
        "boxes": torch.tensor(box, dtype=torch.float32),
        "masks": mask,
        "points": point,
    }


def box_mask(box_norm, side: int) -> torch.Tensor:
    """A normalised corner box rasterised as a filled (side, side) float mask."""
    x1, y1, x2, y2 = (np.asarray(box_norm) * side).tolist()
    m = torch.zeros(side, side)
    m[int(np.floor(y1)) : max(int(np.ceil(y2)), int(np.floor(y1)) + 1), int(np.floor(x1)) : max(int(np.ceil(x2)), int(np.floor(x1)) + 1)] = 1
    return m
