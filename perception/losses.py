"""Losses as small pure functions. Every function returns a scalar tensor (mean over objects)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perception.geometry import generalized_box_iou


def sigmoid_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, h, w) logits vs (K, h, w) targets in [0, 1]: mean per-pixel BCE."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="mean")


def dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per mask, averaged over K."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def box_l1_giou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 4) corner boxes (normalised) -> (L1, 1 - GIoU), each averaged over K."""
    return F.l1_loss(pred, target), (1 - generalized_box_iou(pred, target)).mean()


def mask_to_size(target: torch.Tensor, size) -> torch.Tensor:
    """Resize (K, h, w) soft targets to the logits' (h', w')."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None], size=size, mode="area" if target.shape[-1] > size[-1] else "bilinear")[:, 0]
