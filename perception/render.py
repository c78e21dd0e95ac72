"""Drawing answers (overlay PNG) and serialising them (JSON with COCO RLE masks). No UI code."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from perception.maskformat import rle_encode

# distinct, readable on light and dark backgrounds; object i gets PALETTE[i % len(PALETTE)]
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
]


def color_hex(i: int) -> str:
    r, g, b = PALETTE[i % len(PALETTE)]
    return f"#{r:02x}{g:02x}{b:02x}"


def draw_overlay(image: Image.Image, objects, show_masks: bool = True, show_boxes: bool = True,
                 labels: bool = True, alpha: float = 0.45, start: int = 0) -> Image.Image:
    """Each object's mask (translucent) and box in its own colour, numbered 1.. (from start+1)."""
    base = image.convert("RGB")
    arr = np.asarray(base, dtype=np.float32).copy()
    if show_masks:
        for i, o in enumerate(objects):
            m = getattr(o, "mask", None)
            if m is not None and m.shape == arr.shape[:2]:
                arr[m] = arr[m] * (1 - alpha) + np.array(PALETTE[(start + i) % len(PALETTE)]) * alpha
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(out)
    w = max(2, round(min(out.size) / 150))
    for i, o in enumerate(objects):
        c = PALETTE[(start + i) % len(PALETTE)]
        box = getattr(o, "box", None)
        if box is not None and show_boxes:
            x1, y1, x2, y2 = box
            d.rectangle([x1, y1, x2 - 1, y2 - 1], outline=c, width=w)
        if labels and box is not None:
            x1, y1 = box[0], box[1]
            tag = str(start + i + 1)
            d.rectangle([x1, max(0, y1 - 12), x1 + 8 * len(tag) + 4, max(12, y1)], fill=c)
            d.text((x1 + 2, max(0, y1 - 12)), tag, fill=(255, 255, 255))
    return out


def answer_json(answer) -> list:
    """[{"box": [x1, y1, x2, y2] pixels, "mask": COCO RLE or None, "phrase": str or None}] in answer order.

    An answer that grounds nothing (``answer.objects == []``, e.g. "There is no purple star.") is ``[]``.
    """
    return [
        {
            "box": [round(float(v), 2) for v in o.box],
            "mask": rle_encode(o.mask) if o.mask is not None else None,
            "phrase": o.phrase,
        }
        for o in answer.objects
    ]
