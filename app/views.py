"""What the app shows, drawn from a session dict: the region and answer overlays, the region
list, one-line status texts, and the exported files. No event logic (that is app/handlers.py).
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from perception import Answer, answer_json, color_hex, draw_overlay, rle_decode

EXPORT_DIR = Path(tempfile.gettempdir()) / "perception-app-exports"
EXPORT_MAX_AGE_S = 3600  # exported files older than this are deleted on the next export


# --- images --------------------------------------------------------------------------------------


def box_of(mask: np.ndarray) -> tuple:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def region_shapes(regions: list) -> list:
    """Pending regions as objects draw_overlay understands (.mask, .box)."""
    out = []
    for r in regions:
        d = r["region"]
        if "mask" in d:
            m = rle_decode(d["mask"])
            out.append(SimpleNamespace(mask=m, box=box_of(m)))
        else:
            out.append(SimpleNamespace(mask=None, box=tuple(d["box"])))
    return out


def regions_view(sess: dict):
    """The clickable image: the session image with each pending region (mask/box, number) on it."""
    image = sess["image"]
    if image is None:
        return None
    view = draw_overlay(image, region_shapes(sess["regions"])) if sess["regions"] else image.copy()
    if sess.get("box_start"):
        x, y = sess["box_start"]
        d = ImageDraw.Draw(view)
        c = color_hex(len(sess["regions"]))
        r = max(4, round(min(view.size) / 60))
        d.line([x - r, y, x + r, y], fill=c, width=2)
        d.line([x, y - r, x, y + r], fill=c, width=2)
    return view


def answer_overlay(sess: dict, show_masks: bool = True, show_boxes: bool = True):
    """The answer's objects in their colours; if it grounds none, the regions the question referred to."""
    ans = sess.get("answer")
    if sess["image"] is None or ans is None:
        return None
    shapes = ans.objects or region_shapes(sess.get("asked") or [])
    return draw_overlay(sess["image"], shapes, show_masks=show_masks, show_boxes=show_boxes)


def region_choices(sess: dict) -> list[str]:
    return [f"region{i} · {r['label']}" for i, r in enumerate(sess["regions"], 1)]


def region_dropdown(sess: dict):
    choices = region_choices(sess)
    return gr.update(choices=choices, value=choices[-1] if choices else None)


# --- exports -------------------------------------------------------------------------------------


def _prune_exports() -> None:
    cutoff = time.time() - EXPORT_MAX_AGE_S
    for p in EXPORT_DIR.glob("*"):
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
        except OSError:
            pass


def export_files(answer: Answer, overlay: Image.Image | None) -> tuple[str | None, str | None]:
    """Write the answer as JSON (boxes, COCO RLE masks, phrases) and the overlay as PNG -> their paths."""
    if answer is None:
        return None, None
    EXPORT_DIR.mkdir(exist_ok=True)
    _prune_exports()
    stem = uuid.uuid4().hex[:12]
    jpath = EXPORT_DIR / f"answer-{stem}.json"
    jpath.write_text(json.dumps({"text": answer.text, "objects": answer_json(answer)}, indent=1))
    ppath = None
    if overlay is not None:
        ppath = EXPORT_DIR / f"overlay-{stem}.png"
        overlay.save(ppath)
    return str(jpath), str(ppath) if ppath else None


# --- text ----------------------------------------------------------------------------------------


def image_info(sess: dict) -> str:
    """One line under the image: its size (for typed boxes) or what to do next."""
    if sess["image"] is None:
        return "No image yet: upload one or pick an example."
    W, H = sess["image"].size
    return f"Image: {W} × {H} px. Click an object to refer to it, or just ask."


def answer_status(sess: dict) -> str:
    """One line about the last answer, e.g. "Answer 2: 3 objects grounded"."""
    ans = sess.get("answer")
    if ans is None:
        return ""
    k = len(ans.objects)
    what = f"{k} object{'s' if k != 1 else ''} grounded" if k else "nothing grounded"
    if not k and sess.get("asked"):
        what += " (the panel shows the regions you asked about)"
    return f"Answer {len(sess['history']) // 2}: {what}."
