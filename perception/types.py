"""Public value types of the inference API: what goes in (Region) and what comes out (Grounding, Answer).

Coordinate frame everywhere in this module: pixels of the *input image* as the user passed it
(after EXIF orientation), x = column, y = row, boxes as corners (x1, y1, x2, y2) with x2/y2 exclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Region:
    """A region the user refers to as ``<regionN>``. Give exactly one of point, box or mask.

    point: (x, y) pixel inside the object.
    box:   (x1, y1, x2, y2) pixel corners.
    mask:  H x W bool array, the same size as the image.
    """

    point: Optional[tuple] = None
    box: Optional[tuple] = None
    mask: Optional[np.ndarray] = None

    def __post_init__(self):
        given = [n for n in ("point", "box", "mask") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"Region needs exactly one of point, box or mask; got {given or 'none'}")
        if self.point is not None:
            _check_numbers("point", self.point, 2)
        if self.box is not None:
            _check_numbers("box", self.box, 4)
            x1, y1, x2, y2 = self.box
            if not (x2 > x1 and y2 > y1):
                raise ValueError(f"Region box must have x2 > x1 and y2 > y1; got {tuple(self.box)}")
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.ndim != 2:
                raise ValueError(f"Region mask must be a 2-D H x W array; got shape {m.shape}")
            object.__setattr__(self, "mask", m.astype(bool))

    @property
    def kind(self) -> str:
        return "point" if self.point is not None else "box" if self.box is not None else "mask"


def _check_numbers(name, values, n):
    try:
        vals = [float(v) for v in values]
    except OverflowError:
        raise ValueError(f"Region {name} has a number that is too large") from None
    except (TypeError, ValueError):
        raise ValueError(f"Region {name} must be {n} numbers; got {values!r}") from None
    if len(vals) != n:
        raise ValueError(f"Region {name} must be {n} numbers; got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"Region {name} has a non-finite coordinate: {tuple(values)}")
    if any(v < 0 for v in vals):
        raise ValueError(f"Region {name} has a negative coordinate: {tuple(values)}")


@dataclass
class Grounding:
    """One grounded object of an answer.

    box:   (x1, y1, x2, y2) floats in input-image pixels.
    mask:  H x W bool ndarray in input-image pixels, or None when the model has no mask head.
    phrase: the answer words marked for this object (``<p>...</p>``), or None.
    score: the confidence in [0, 1] that the object is there: the mask head's peak probability
           inside the mask (0.0 in the text-box baseline, which has none); sort objects by it.
    """

    box: tuple
    mask: Optional[np.ndarray] = None
    phrase: Optional[str] = None
    score: float = 0.0


@dataclass
class Answer:
    """A model answer. ``history`` goes back in as ``history=`` for the next turn about the same image."""

    text: str
    objects: list = field(default_factory=list)
    history: list = field(default_factory=list)
    raw: str = ""  # the generated text with perception tokens and markup, for debugging
