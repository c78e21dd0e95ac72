"""Event handlers of the app: plain functions of (session dict, component values) -> output values.

They are wired to components in ``app/ui.py`` and can be called directly (tests). Session state
(``new_session()``) lives in a ``gr.State``, one per browser tab; handlers never mutate the dict
they are given but return an updated copy. Errors reach the user as ``gr.Warning`` (nothing
happened, carry on) or ``gr.Error`` (the request failed), never as a stack trace.

Session dict:
    image:     the PIL image (RGB) the conversation is about, or None
    regions:   [{"region": {"mask": RLE} | {"box": [x1, y1, x2, y2]}, "label": str}], pending for the next message
    box_start: [x, y] first corner of a box being drawn (box mode), or None
    history:   the pipeline's messages-format history (user turns carry "regions")
    chat:      what the Chatbot shows (messages format, HTML contents)
    answer:    the last perception.Answer, or None
    asked:     the regions sent with the last message (shown when its answer grounds nothing)
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from perception import Answer, Region, answer_json, draw_overlay, load_image, rle_decode, rle_encode

from app import format as fmt
from app import model
from app.views import (answer_overlay, answer_status, box_of, export_files, image_info, region_choices,
                       region_dropdown, regions_view)

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.png"))
MODE_OBJECT = "object"
MODE_BOX = "box (2 corners)"
MODES = [MODE_OBJECT, MODE_BOX]


def new_session() -> dict:
    return {"image": None, "regions": [], "box_start": None, "history": [], "chat": [], "answer": None, "asked": []}


def _copy(sess: dict | None) -> dict:
    s = dict(new_session(), **(sess or {}))
    s["regions"] = list(s["regions"])
    s["asked"] = list(s["asked"])
    s["history"] = list(s["history"])
    s["chat"] = [dict(m) for m in s["chat"]]
    return s


# --- errors --------------------------------------------------------------------------------------


def _shown(msg: str) -> str:
    """Toasts render HTML: escape it so ``<region3>`` stays visible."""
    return html.escape(msg, quote=False)


def error(msg: str) -> gr.Error:
    return gr.Error(_shown(msg), title="Error", print_exception=False)


def warn(msg: str) -> None:
    gr.Warning(_shown(msg))


def model_error(what: str, e: Exception) -> gr.Error:
    """A failure inside the model: logged in full on the server, short for the user."""
    log.exception("model error during %s", what)
    return error(f"The model failed while {what} ({type(e).__name__}). Try again or use another image; "
                 f"details are in the server log.")


def load(src):
    """Any accepted input -> RGB PIL image within the pixel limit, or gr.Error."""
    if src is None:
        raise error("No image: upload one or pick an example first.")
    try:
        return load_image(src, model.limits().max_image_pixels)
    except ValueError as e:
        msg = str(e)
        if isinstance(src, (str, os.PathLike)):  # name the file, not where the server keeps it
            msg = msg.replace(os.fspath(src), Path(src).name)
        raise error(msg) from None


# --- image ---------------------------------------------------------------------------------------


def set_image(sess: dict, image):
    """A new image starts a new conversation.

    Returns (sess, clickable image, chat, overlay, region dropdown, objects JSON, json file,
    png file, image info, answer status). A rejected image leaves the session without one and
    shows a warning.
    """
    s = new_session()
    if image is not None:
        try:
            s["image"] = load_image(image, model.limits().max_image_pixels)
        except ValueError as e:
            warn(str(e))
    return s, s["image"], [], None, region_dropdown(s), None, None, None, image_info(s), ""


def clear_image(sess: dict):
    """The user removed the image: a fresh session (same outputs as set_image)."""
    return set_image(sess, None)


def pick_example(sess: dict, evt: gr.SelectData):
    """Gallery click -> that example scene as the new image (same outputs as set_image)."""
    i = evt.index if isinstance(evt.index, int) else evt.index[0]
    if not 0 <= i < len(EXAMPLES):
        raise error(f"no example number {i}")
    return set_image(sess, str(EXAMPLES[i]))


# --- regions -------------------------------------------------------------------------------------


def segment(image, x, y):
    """Click-to-segment, the ``/segment_point`` endpoint: (image, x, y pixels) -> (mask RLE, overlay).

    image: file path, PIL image or array. The overlay shows the mask and its box as region 1.
    """
    img = load(image)
    try:
        xy = (int(x), int(y))
    except (TypeError, ValueError):
        raise error(f"x and y must be integer pixels; got {x!r}, {y!r}") from None
    W, H = img.size
    if not (0 <= xy[0] < W and 0 <= xy[1] < H):
        shown = ", ".join(str(v) if abs(v) < 10**9 else f"{float(v):g}" for v in xy)
        raise error(f"point ({shown}) is outside the {W}x{H} image")
    try:
        mask = model.segment_point(img, xy)
    except ValueError as e:
        raise error(str(e)) from None
    except Exception as e:
        raise model_error("segmenting the click", e) from None
    shapes = [SimpleNamespace(mask=mask, box=box_of(mask))] if mask.any() else []
    return rle_encode(mask), draw_overlay(img, shapes)


def click(sess: dict, message: str, mode: str, shown, evt: gr.SelectData):
    """A click on the image adds a region (object mask, or a box corner in box mode).

    shown: the image component's value; used only when the session has no image yet (a click that
    overtook its upload event). Returns (sess, clickable image, message, region dropdown); the
    message gains ``<regionN>``.
    """
    s = _copy(sess)
    if s["image"] is None and shown is not None:
        s = set_image(s, shown)[0]
    if s["image"] is None:
        warn("Load an image first (upload one or pick an example), then click an object in it.")
        return s, gr.skip(), message, gr.skip()
    try:
        x, y = (int(round(float(v))) for v in evt.index[:2])
    except (TypeError, ValueError, IndexError):
        raise error(f"could not read the click position {evt.index!r}") from None
    W, H = s["image"].size
    x, y = min(max(x, 0), W - 1), min(max(y, 0), H - 1)
    if len(s["regions"]) >= model.limits().max_regions and not (mode == MODE_BOX and s["box_start"]):
        warn(f"At most {model.limits().max_regions} regions per message: remove one first.")
        return s, gr.skip(), message, gr.skip()
    if mode == MODE_BOX:
        if not s["box_start"]:
            s["box_start"] = [x, y]
            return s, regions_view(s), message, gr.skip()
        (x0, y0), s["box_start"] = s["box_start"], None
        box = [min(x0, x), min(y0, y), max(x0, x) + 1, max(y0, y) + 1]
        entry = {"region": {"box": box}, "label": f"box ({box[0]}, {box[1]})-({box[2]}, {box[3]})"}
    else:
        s["box_start"] = None
        rle, _ = segment(s["image"], x, y)
        if not rle_decode(rle).any():
            warn("No object found at that point: try another spot, or box mode.")
            return s, regions_view(s), message, gr.skip()
        entry = {"region": {"mask": rle}, "label": f"object at ({x}, {y})"}
    s["regions"].append(entry)
    message = fmt.append_placeholder(message, len(s["regions"]))
    return s, regions_view(s), message, region_dropdown(s)


def add_box(sess: dict, message: str, x1, y1, x2, y2):
    """Add a box region from typed corners (pixels, x2/y2 exclusive). Same outputs as click()."""
    s = _copy(sess)
    if s["image"] is None:
        warn("Load an image first, then add a box.")
        return s, gr.skip(), message, gr.skip()
    if len(s["regions"]) >= model.limits().max_regions:
        warn(f"At most {model.limits().max_regions} regions per message: remove one first.")
        return s, gr.skip(), message, gr.skip()
    try:
        box = [int(v) for v in (x1, y1, x2, y2)]
        Region(box=tuple(box))
    except (TypeError, ValueError) as e:
        warn(f"A box needs four numbers with x1 < x2 and y1 < y2 ({e}).")
        return s, gr.skip(), message, gr.skip()
    W, H = s["image"].size
    if box[0] >= W or box[1] >= H:
        warn(f"The box {tuple(box)} is outside the {W}x{H} image.")
        return s, gr.skip(), message, gr.skip()
    box = [box[0], box[1], min(box[2], W), min(box[3], H)]
    s["regions"].append({"region": {"box": box}, "label": f"box ({box[0]}, {box[1]})-({box[2]}, {box[3]})"})
    message = fmt.append_placeholder(message, len(s["regions"]))
    return s, regions_view(s), message, region_dropdown(s)


def remove_region(sess: dict, message: str, choice: str | None):
    """Remove the region picked in the dropdown; later ones shift down (so do their placeholders)."""
    s = _copy(sess)
    choices = region_choices(s)
    if choice not in choices:
        warn("Pick a region to remove in the list first.")
        return s, gr.skip(), message, region_dropdown(s)
    k = choices.index(choice) + 1
    s["regions"].pop(k - 1)
    return s, regions_view(s), fmt.remove_placeholder(message, k), region_dropdown(s)


def clear_regions(sess: dict, message: str):
    s = _copy(sess)
    for k in range(len(s["regions"]), 0, -1):
        message = fmt.remove_placeholder(message, k)
    s["regions"], s["box_start"] = [], None
    return s, regions_view(s), (message or "").strip(), region_dropdown(s)


# --- chat ----------------------------------------------------------------------------------------


def _regions(entries: list) -> list:
    """Session region entries -> perception.Region (masks decoded from RLE)."""
    out = []
    for e in entries:
        d = e["region"]
        out.append(Region(mask=rle_decode(d["mask"])) if "mask" in d else Region(box=tuple(d["box"])))
    return out


def chat(sess: dict, message: str, show_masks: bool = True, show_boxes: bool = True):
    """Send the message (with its pending regions) and stream the answer.

    Yields (sess, chat, message box, clickable image, region dropdown, overlay, objects JSON,
    json file, png file, status line). The pending regions are consumed by the message.
    """
    s = _copy(sess)
    message = (message or "").strip()
    skip = gr.skip()
    nothing = (s, skip, skip, skip, skip, skip, skip, skip, skip, skip)
    problem = None
    if s["image"] is None:
        problem = "No image: upload one or pick an example first."
    elif not message:
        problem = "The message is empty: type a question or an instruction such as “Find the red circle.”"
    else:
        try:
            fmt.check_placeholders(message, len(s["regions"]))
        except ValueError as e:
            problem = str(e)
    if problem:  # the user can fix it: a warning, and nothing changes
        warn(problem)
        yield nothing
        return
    sent, used = fmt.compact_regions(message, s["regions"])
    if len(used) < len(s["regions"]):
        n = len(s["regions"]) - len(used)
        warn(f"{n} region(s) not mentioned in the message were left out; refer to one with <regionN>.")
    chat_before = s["chat"]
    shown = chat_before + [{"role": "user", "content": fmt.user_html(sent)},
                           {"role": "assistant", "content": "…"}]
    yield s, shown, "", skip, skip, skip, skip, skip, skip, "Answering…"
    answer = None
    try:
        for out in model.stream_chat(s["image"], sent, s["history"], _regions(used)):
            if isinstance(out, Answer):
                answer = out
            elif out:
                shown[-1] = {"role": "assistant", "content": fmt.escape(out)}
                yield s, shown, skip, skip, skip, skip, skip, skip, skip, skip
    except ValueError as e:  # the pipeline's clear messages (limits, regions): put the message back
        warn(str(e))
        yield s, chat_before, message, skip, skip, skip, skip, skip, skip, ""
        return
    except Exception as e:
        yield s, chat_before, message, skip, skip, skip, skip, skip, skip, ""
        raise model_error("answering", e) from None
    if answer is None:
        yield s, chat_before, message, skip, skip, skip, skip, skip, skip, ""
        raise error("The model returned no answer.")
    phrases = [o.phrase for o in answer.objects]
    body = fmt.answer_html(answer.text, phrases) or "<em>(empty answer)</em>"
    shown[-1] = {"role": "assistant", "content": body}
    s.update(history=answer.history, chat=shown, answer=answer, regions=[], box_start=None, asked=used)
    overlay = answer_overlay(s, show_masks, show_boxes)
    jfile, pfile = export_files(answer, overlay)
    yield (s, shown, skip, regions_view(s), region_dropdown(s), overlay, answer_json(answer), jfile, pfile,
           answer_status(s))


def suggestions(sess: dict):
    """The suggested messages for the session's pending regions (after a click: about the new region)."""
    return gr.Dataset(samples=[[p] for p in fmt.suggested_prompts(len((sess or {}).get("regions") or []))])


def use_suggestion(sample) -> str:
    """A picked suggestion (the Dataset's sample: [message]) -> the message box's text."""
    return sample[0] if isinstance(sample, (list, tuple)) and sample else str(sample or "")


def redraw(sess: dict, show_masks: bool, show_boxes: bool):
    """Mask/box toggles -> (overlay, png file)."""
    overlay = answer_overlay(sess, show_masks, show_boxes)
    if overlay is None:
        return None, None
    _, pfile = export_files(sess["answer"], overlay)
    return overlay, pfile


def clear_chat(sess: dict):
    """Forget the conversation (the image and pending regions stay).

    Returns (sess, chat, overlay, objects JSON, json file, png file, status line).
    """
    s = _copy(sess)
    s.update(history=[], chat=[], answer=None, asked=[])
    return s, [], None, None, None, None, ""


