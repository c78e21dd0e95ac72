"""Class-agnostic object proposals: an object-centre heatmap over the mask head's per-pixel features.

Frames and shapes: the mask head's per-pixel features (B, C, h, w) are in the model frame; the
head gives heatmap logits (B, h, w). ``heatmap_peaks`` keeps the local maxima of their
``kernel`` x ``kernel`` window whose probability clears a threshold, at most ``k`` per image, best
first, as clicks in the normalised model frame (pixel centres: (col + 0.5) / w). The caller sends
the clicks down the mask head's click path (``mask_head.from_points``), which gives each
proposal's mask. Training target (``centre_heatmap``): per object a Gaussian at its mask's
centroid, sigma = ``sigma_scale`` x sqrt(mask area) heatmap pixels (at least 1), the maximum over
objects; ``centre_focal_loss`` is CenterNet's penalty-reduced focal loss against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProposalHead(nn.Module):
    """(B, C, h, w) per-pixel features -> (B, h, w) object-centre logits.

    One 3x3 convolution (+ GELU) per entry of ``dilations``, then a 1x1 to one channel; with
    ``pool`` > 1 they run on the features average-pooled ``pool`` x ``pool`` and the logits are
    upsampled back to (h, w) (bilinear). A centre is a property of the whole object, so the
    receptive field must span one: pool 2 with dilations (1, 2, 4) sees 15 x 15 pooled pixels
    (120 image pixels at stride 4); pool 1 with (1,) sees 3 x 3 feature pixels and only learns
    when the features under it are trained for it.
    """

    def __init__(self, feat_dim: int, hidden: int = 64, dilations: tuple = (1,), pool: int = 1):
        super().__init__()
        self.pool = pool
        layers, c = [], feat_dim
        for d in dilations:
            layers += [nn.Conv2d(c, hidden, 3, padding=d, dilation=d), nn.GELU()]
            c = hidden
        self.net = nn.Sequential(*layers, nn.Conv2d(hidden, 1, 1))
        nn.init.constant_(self.net[-1].bias, -math.log((1 - 0.05) / 0.05))  # prior: 5% of pixels are centres

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float()
        if self.pool > 1:  # the convolutions run on a coarser grid; the logits come back at the features' size
            out = self.net(F.avg_pool2d(x, self.pool, ceil_mode=True))
            return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return self.net(x)[:, 0]


def heatmap_peaks(logits: torch.Tensor, k: int, threshold: float, kernel: int):
    """(B, h, w) centre logits -> the peaks, best first per image, at most ``k`` per image.

    Returns (points (P, 2) normalised model-frame (x, y), bidx (P,) image row, slot (P,) rank of
    the peak in its image, scores (P,) probability).
    """
    B, h, w = logits.shape
    prob = logits.float().sigmoid()
    pooled = F.max_pool2d(prob[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
    peak = (prob >= pooled) & (prob >= threshold)
    flat = torch.where(peak, prob, torch.zeros_like(prob)).flatten(1)
    top, idx = flat.topk(min(k, h * w), dim=1)
    keep = top > 0
    bidx, slot = keep.nonzero(as_tuple=True)
    idx, scores = idx[bidx, slot], top[bidx, slot]
    points = torch.stack([(idx % w).float() + 0.5, (idx // w).float() + 0.5], -1) / torch.tensor([w, h], device=logits.device)
    return points, bidx, slot, scores


def centre_heatmap(masks: torch.Tensor, size: tuple, sigma_scale: float) -> torch.Tensor:
    """(M, s, s) object masks in [0, 1] (model frame) -> (h, w) target in [0, 1] at ``size`` = (h, w):
    a Gaussian at each mask's centroid (exactly 1 at its nearest heatmap pixel), max over objects."""
    h, w = size
    target = torch.zeros(h, w, device=masks.device)
    if masks.shape[0] == 0:
        return target
    m = F.interpolate(masks[:, None].float(), size=(h, w), mode="area")[:, 0]  # (M, h, w)
    area = m.sum((1, 2))
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    for mk, a in zip(m, area):
        if a <= 0:
            continue
        cy = ((mk.sum(1) * ys).sum() / a).round()
        cx = ((mk.sum(0) * xs).sum() / a).round()
        sigma = max(1.0, sigma_scale * float(a.sqrt()))
        g = torch.exp(-((ys[:, None] - cy) ** 2 + (xs[None] - cx) ** 2) / (2 * sigma**2))
        target = torch.maximum(target, g)
    return target


def centre_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's focal loss: logits and target (B, h, w); target 1 at centres. Mean over centres
    (over pixels when there is none)."""
    p = logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target >= 1 - 1e-6
    pos_loss = -(torch.log(p) * (1 - p) ** alpha)[pos].sum()
    neg_loss = -(torch.log(1 - p) * p**alpha * (1 - target) ** beta)[~pos].sum()
    return (pos_loss + neg_loss) / max(1, int(pos.sum()))
