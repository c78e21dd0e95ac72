"""The text-box baseline (``PerceptionConfig.output_mode = "text_box"``): the same backbone writes
boxes as text, Shikra-style, instead of one perception token per object.

    perception mode:  <p>the red circle</p><loc>
    text_box mode:    <p>the red circle</p>[0.12,0.34,0.56,0.78]

A text box is the object's corners (x1, y1, x2, y2) in the *normalised model frame*
(perception.geometry.ImageFrame: [0, 1] x [0, 1], x right, y down), two decimals, clipped to [0, 1].
Same tokenizer, data, optimiser and seeds as perception mode; only the answer representation
differs. This mode writes NO masks: there is no hidden state that decodes into one, so
``Grounding.mask`` is None. The box and mask heads get no targets (no ``<loc>`` in the text) and
the click auxiliary is off, so the training loss is next-token cross-entropy only and the heads
receive no gradient (except through the region encoder, which reads mask-head features as an
*input* when a question has a ``<regionK>``).

Used in two places: ``Collator`` rewrites training samples with ``to_text_boxes``, and
``TextBoxDecoder`` (picked by ``perception.decoding.answer_decoder`` for this mode) reads generated
answers back with ``parse_text_boxes``.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from perception.data.sample import Sample
from perception.geometry import ImageFrame
from perception.tokens import PERCEPTION_TOKEN
from perception.types import Grounding

OUTPUT_MODES = ("perception", "text_box")
DECIMALS = 2  # digits after the point in a text box

_LOC = re.compile(re.escape(PERCEPTION_TOKEN))
# an optional <p>phrase</p> right before a bracketed box; both parts bounded so hostile text stays linear
_TEXT_BOX = re.compile(r"(?:<p>((?:(?!<p>|</p>).){0,200}?)</p>\s*)?\[([^\[\]]{0,80})\]", re.S)


def box_text(box_norm) -> str:
    """(4,) normalised model-frame corners -> ``"[x1,y1,x2,y2]"`` with DECIMALS digits, clipped to [0, 1]."""
    b = np.clip(np.asarray(box_norm, dtype=np.float64).reshape(4), 0.0, 1.0)
    return "[" + ",".join(f"{v:.{DECIMALS}f}" for v in b) + "]"


def to_text_boxes(sample: Sample, frame_cfg) -> Sample:
    """Rewrite every turn's answer for text_box mode: each ``<loc>`` becomes its target's box as text.

    frame_cfg: the BackboneConfig (or a PerceptionConfig) giving the model frame (image_size,
    resize_mode). Targets are emptied (no perception tokens remain); boxes, masks and regions of
    the sample are kept. Returns a new Sample; ``sample`` is not modified.
    """
    b = getattr(frame_cfg, "backbone", frame_cfg)
    W, H = sample.image.size
    frame = ImageFrame(W, H, b.image_size, b.resize_mode)
    turns = []
    for t in sample.turns:
        targets = iter(t.targets)
        text = _LOC.sub(lambda _: box_text(frame.boxes_to_model(sample.boxes[next(targets)])), t.assistant)
        turns.append(dataclasses.replace(t, assistant=text, targets=[]))
    return dataclasses.replace(sample, turns=turns)


def parse_text_boxes(raw: str, frame: ImageFrame, max_objects: int | None = None) -> list[Grounding]:
    """Generated text -> one Grounding per well-formed ``[x1,y1,x2,y2]`` box, in order.

    Numbers are read in the normalised model frame, clipped to [0, 1], corners ordered, then mapped
    to input-image pixels with ``frame``. A box that is not four finite numbers is skipped, never an
    error. ``phrase`` is the ``<p>...</p>`` right before the box (or None); ``mask`` is None (this
    mode has no masks); ``score`` is 0.0 (no confidence). At most ``max_objects`` boxes.
    """
    out = []
    for m in _TEXT_BOX.finditer(raw or ""):
        if max_objects is not None and len(out) >= max_objects:
            break
        parts = m.group(2).split(",")
        if len(parts) != 4:
            continue
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            continue
        if not all(math.isfinite(v) for v in vals):
            continue
        x1, y1, x2, y2 = np.clip(vals, 0.0, 1.0)
        norm = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        box = frame.boxes_to_pixels(np.asarray(norm))
        phrase = (m.group(1) or "").strip() or None
        out.append(Grounding(box=tuple(float(v) for v in box), mask=None, phrase=phrase, score=0.0))
    return out


class TextBoxDecoder:
    """The answer decoder of text_box mode (see perception.decoding): no ``<loc>`` is ever decoded
    (none is in the answer), so nothing is fed back; ``objects`` parses the boxes from the text."""

    def __init__(self, frame: ImageFrame, max_objects: int | None = None):
        self.frame = frame
        self.max_objects = max_objects

    def see_prompt(self, input_ids, hidden, region_embeds=None) -> None:
        """Nothing to read from the prompt (the decoder interface: perception.decoding.ObjectDecoder.see_prompt)."""

    def __call__(self, loc_state):
        return None

    def objects(self, raw: str) -> list[Grounding]:
        return parse_text_boxes(raw, self.frame, self.max_objects)
