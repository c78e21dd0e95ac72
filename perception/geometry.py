"""Every coordinate conversion of the project lives here.

Frames:
- *pixels*: the input image, x = column, y = row, boxes (x1, y1, x2, y2) with x2/y2 exclusive
  (x2 = last column + 1), floats allowed.
- *model frame*: the square model input of side S, normalised to [0, 1] x [0, 1]
  (x right, y down). All heads predict and all region encoders read in this frame.

``ImageFrame`` maps one image between the two. ``mode="stretch"`` resizes W x H to S x S
(anisotropic; no pixels wasted, used by the tiny preset). ``mode="pad"`` scales the longest side
to S and pads bottom/right (SAM's and our LLaVA presets' convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class ImageFrame:
    width: int  # input image W in pixels
    height: int  # input image H in pixels
    size: int  # model input side S
    mode: str = "stretch"  # "stretch" | "pad"

    @property
    def scale(self) -> tuple[float, float]:
        """Pixels -> normalised model frame, multiplicative factors (sx, sy)."""
        if self.mode == "stretch":
            return 1.0 / self.width, 1.0 / self.height
        s = 1.0 / max(self.width, self.height)
        return s, s

    @property
    def valid(self) -> tuple[float, float]:
        """Extent (w, h) of the image content in the normalised model frame (1, 1 unless padded)."""
        sx, sy = self.scale
        return self.width * sx, self.height * sy

    # --- images -------------------------------------------------------------------------------
    def image_to_model(self, image: Image.Image, fill=(124, 116, 104)) -> Image.Image:
        """RGB PIL image (W x H) -> S x S PIL image in the model frame."""
        S = self.size
        if self.mode == "stretch":
            return image.resize((S, S), Image.BILINEAR)
        vw, vh = self.valid
        w, h = max(1, round(vw * S)), max(1, round(vh * S))
        canvas = Image.new("RGB", (S, S), fill)
        canvas.paste(image.resize((w, h), Image.BILINEAR), (0, 0))
        return canvas

    # --- points and boxes ---------------------------------------------------------------------
    def points_to_model(self, pts) -> np.ndarray:
        """(..., 2) pixel (x, y) -> normalised model frame. Pixel centres: x + 0.5."""
        p = np.asarray(pts, dtype=np.float64)
        sx, sy = self.scale
        return np.stack([(p[..., 0] + 0.5) * sx, (p[..., 1] + 0.5) * sy], -1)

    def points_to_pixels(self, pts) -> np.ndarray:
        """(..., 2) normalised model-frame (x, y) -> pixel (x, y), integer pixel indices clipped
        to the image (``points_to_model``'s inverse, pixel centres to their pixel)."""
        p = np.asarray(pts, dtype=np.float64)
        sx, sy = self.scale
        x = np.clip(np.floor(p[..., 0] / sx), 0, self.width - 1)
        y = np.clip(np.floor(p[..., 1] / sy), 0, self.height - 1)
        return np.stack([x, y], -1).astype(np.int64)

    def boxes_to_model(self, boxes) -> np.ndarray:
        """(..., 4) pixel corners -> normalised model-frame corners."""
        b = np.asarray(boxes, dtype=np.float64)
        sx, sy = self.scale
        return b * np.array([sx, sy, sx, sy])

    def boxes_to_pixels(self, boxes) -> np.ndarray:
        """(..., 4) normalised model-frame corners -> pixel corners, clipped to the image."""
        b = np.asarray(boxes, dtype=np.float64)
        sx, sy = self.scale
        out = b / np.array([sx, sy, sx, sy])
        return np.clip(out, 0, [self.width, self.height, self.width, self.height])

    # --- masks --------------------------------------------------------------------------------
    def mask_to_model(self, mask: np.ndarray, side: int) -> torch.Tensor:
        """H x W bool mask -> side x side float tensor in the model frame (area-averaged)."""
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        vw, vh = self.valid
        w, h = max(1, round(vw * side)), max(1, round(vh * side))
        m = F.interpolate(m, size=(h, w), mode="area")[0, 0]
        out = torch.zeros(side, side)
        out[:h, :w] = m
        return out

    def logits_to_pixels(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., h, w) logits in the model frame -> (..., H, W) logits in input-image pixels."""
        h, w = logits.shape[-2:]
        vw, vh = self.valid
        crop = logits[..., : max(1, round(vh * h)), : max(1, round(vw * w))]
        lead = crop.shape[:-2]
        x = crop.reshape(-1, 1, *crop.shape[-2:]).float()
        x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return x.reshape(*lead, self.height, self.width)


def box_from_mask(mask: np.ndarray):
    """Tight box (x1, y1, x2, y2), x2/y2 exclusive, of a bool H x W mask; None if empty."""
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    if len(xs) == 0:
        return None
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def blob_around_peak(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The connected component (8-connectivity) of ``prob >= threshold`` that holds the peak pixel.

    Stray pixels on other objects inflate a whole-mask box; the blob around the most confident
    pixel is the object the head meant. Returns an H x W bool mask (the peak pixel alone if
    nothing clears the threshold).
    """
    from scipy import ndimage

    fg = prob >= threshold
    peak = np.unravel_index(int(np.argmax(prob)), prob.shape)
    if not fg[peak]:
        out = np.zeros_like(fg)
        out[peak] = True
        return out
    labels, _ = ndimage.label(fg, structure=np.ones((3, 3), bool))
    return labels == labels[peak]


def mask_at_click(prob: np.ndarray, x: int, y: int, threshold: float = 0.5) -> np.ndarray:
    """The object a click at pixel (x, y) segments, from the click's H x W mask probabilities:
    the connected component (8-connectivity) of ``prob >= threshold`` that holds the click, or,
    when the clicked pixel itself is below the threshold, the blob around the most confident pixel
    (``blob_around_peak``). Returns an H x W bool mask."""
    from scipy import ndimage

    fg = prob >= threshold
    if not fg[int(y), int(x)]:
        return blob_around_peak(prob, threshold)
    labels, _ = ndimage.label(fg, structure=np.ones((3, 3), bool))
    return labels == labels[int(y), int(x)]


def components_at(masks: torch.Tensor, points: torch.Tensor, max_steps: int | None = None) -> torch.Tensor:
    """The connected component (8-connectivity) of each mask that holds its point.

    masks (P, h, w) bool; points (P, 2) normalised (x, y) in the masks' frame. A mask whose point
    pixel is background keeps its component nearest the point within a 3x3 window, else stays
    as it is. A click's mask leaks onto other objects as separate blobs more often than it misses
    its own; those blobs inflate the box and the embedding of what was clicked. Returns (P, h, w)
    bool. ``max_steps`` caps the flood fill (default h + w: enough for the convex shapes drawn here).
    """
    P, h, w = masks.shape
    if P == 0:
        return masks
    fg = masks.float()[:, None]
    xs = (points[:, 0].float() * w).long().clamp(0, w - 1)
    ys = (points[:, 1].float() * h).long().clamp(0, h - 1)
    seed = torch.zeros_like(fg)
    seed[torch.arange(P), 0, ys, xs] = 1
    seed = F.max_pool2d(seed, 3, stride=1, padding=1) * fg
    has = seed.flatten(1).amax(1) > 0
    for _ in range(max_steps or h + w):
        grown = F.max_pool2d(seed, 3, stride=1, padding=1) * fg
        if torch.equal(grown, seed):
            break
        seed = grown
    out = seed[:, 0] > 0
    return torch.where(has[:, None, None], out, masks)


def box_iou(a, b) -> float:
    """IoU of two corner boxes (any frame, same frame for both)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pairwise_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every corner box of ``a`` (R, 4) with every one of ``b`` (K, 4), same frame -> (R, K)
    (0 where the union is empty)."""
    a, b = a.float(), b.float()
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)
    union = area(a)[:, None] + area(b)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks of the same shape (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of (N, 4) corner boxes -> (N,)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-6)
    lt_c = torch.min(a[:, :2], b[:, :2])
    rb_c = torch.max(a[:, 2:], b[:, 2:])
    area_c = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (area_c - union) / area_c.clamp(min=1e-6)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


# --- model-frame tensors (region encoder, token targets) ---------------------------------------
def boxes_of_masks(masks: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight normalised model-frame boxes of (R, M, M) masks -> (boxes (R, 4), non_empty (R,) bool).

    A mask covering columns c0..c1 gives x1 = c0 / M, x2 = (c1 + 1) / M. Empty masks give zeros.
    """
    fg = masks > threshold
    R, Mh, Mw = fg.shape
    cols, rows = fg.any(1), fg.any(2)  # (R, Mw), (R, Mh)
    ar_w = torch.arange(Mw, device=masks.device)
    ar_h = torch.arange(Mh, device=masks.device)
    x1 = torch.where(cols, ar_w, Mw).min(1).values
    x2 = torch.where(cols, ar_w, -1).max(1).values + 1
    y1 = torch.where(rows, ar_h, Mh).min(1).values
    y2 = torch.where(rows, ar_h, -1).max(1).values + 1
    ok = cols.any(1)
    boxes = torch.stack([x1 / Mw, y1 / Mh, x2 / Mw, y2 / Mh], -1).float()
    return torch.where(ok[:, None], boxes, torch.zeros_like(boxes)), ok


def context_boxes(boxes: torch.Tensor, context: float, min_side: float = 1 / 16) -> torch.Tensor:
    """Grow (R, 4) normalised corner boxes by ``context`` x their size on every side, to at least
    ``min_side`` per side, about the same centre (may extend past the frame: crops pad with 0)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = ((boxes[:, 2:] - boxes[:, :2]) * (0.5 + context)).clamp(min=min_side / 2)
    return torch.cat([c - half, c + half], -1)


def roi_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crops of (R, C, h, w) model-frame maps inside (R, 4) normalised corner boxes ->
    (R, C, size, size). The box edges map to the crop's outer pixel edges; outside the frame is 0."""
    x1, y1, x2, y2 = boxes.float().unbind(-1)
    theta = torch.zeros(boxes.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0] = x2 - x1
    theta[:, 0, 2] = x1 + x2 - 1
    theta[:, 1, 1] = y2 - y1
    theta[:, 1, 2] = y1 + y2 - 1
    grid = F.affine_grid(theta, (boxes.shape[0], x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
