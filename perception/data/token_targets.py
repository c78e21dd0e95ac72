"""Per-image-token attribute targets for the dense auxiliary loss (TokenAuxConfig).

The image tokens form a square g x g grid over the model frame (token i is row i // g, column
i % g). For each cell and attribute group: the word index + 1 of the object whose box centre lies
in the cell ("centre"), and of the object covering the largest fraction of the cell if that is at
least ``min_cover`` ("cover"); 0 = none; IGNORE when the sample's labels do not all carry a word
of that group (real data: unknown, so no target). ``object_targets`` gives the same words per
object, for the read-out on region embeddings (``LossWeights.region_aux``).
"""

from __future__ import annotations

import numpy as np
import torch

from perception.geometry import ImageFrame
from perception.prompting import IGNORE


def attribute_classes(labels: list, attributes: list) -> np.ndarray:
    """K label strings -> (K, G) int64: per attribute group, the index + 1 of the group's word
    found in the label (words matched case-insensitively), or -1 when the label has none."""
    words = [str(lb).lower().split() for lb in labels]
    cls = np.full((len(labels), len(attributes)), -1, dtype=np.int64)
    for j, group in enumerate(attributes):
        for k in range(len(labels)):
            hit = [i for i, w in enumerate(group) if w in words[k]]
            if hit:
                cls[k, j] = hit[0] + 1
    return cls


def object_targets(labels: list, attributes: list) -> torch.Tensor:
    """K labels -> (K, G) long targets for the region read-out (IGNORE where a label lacks the group)."""
    cls = torch.from_numpy(attribute_classes(labels, attributes))
    return torch.where(cls >= 0, cls, torch.full_like(cls, IGNORE))


def token_targets(labels: list, masks: np.ndarray, boxes: np.ndarray, frame: ImageFrame, grid: int,
                  attributes: list, min_cover: float = 0.2) -> torch.Tensor:
    """labels: K strings; masks (K, H, W) bool visible masks; boxes (K, 4) pixel corners.
    Returns (grid * grid, 2 * G) long: columns 0..G-1 centre targets, G..2G-1 cover targets."""
    G = len(attributes)
    out = torch.zeros(grid * grid, 2 * G, dtype=torch.long)
    K = len(labels)
    cls = attribute_classes(labels, attributes)
    known = (cls >= 0).all(0) if K else np.ones(G, bool)
    if K:
        sub = 4  # cover fraction from a 4 x 4 sub-grid per cell
        cover = torch.stack([frame.mask_to_model(masks[k], grid * sub) for k in range(K)])
        cover = cover.reshape(K, grid, sub, grid, sub).mean((2, 4)).reshape(K, -1)  # (K, g*g)
        best, who = cover.max(0)
        area = masks.reshape(K, -1).sum(1)
        norm = frame.boxes_to_model(np.asarray(boxes, dtype=np.float64).reshape(K, 4))
        cx = ((norm[:, 0] + norm[:, 2]) / 2 * grid).astype(int).clip(0, grid - 1)
        cy = ((norm[:, 1] + norm[:, 3]) / 2 * grid).astype(int).clip(0, grid - 1)
        centre_of = {}
        for k in np.argsort(area):  # larger objects win a shared cell
            centre_of[int(cy[k] * grid + cx[k])] = int(k)
        for j in range(G):
            col = torch.from_numpy(cls[:, j])
            out[:, G + j] = torch.where(best >= min_cover, col[who], torch.zeros_like(who))
            for cell, k in centre_of.items():
                out[cell, j] = int(cls[k, j])
    for j in range(G):
        if not known[j]:
            out[:, j] = IGNORE
            out[:, G + j] = IGNORE
    return out
