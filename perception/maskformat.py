"""The JSON forms of masks and regions shared by the API, the app and the JSONL data files.

Frames: image pixels, x = column, y = row; boxes are corners (x1, y1, x2, y2) with x2/y2 exclusive.
A mask is COCO RLE ``{"size": [H, W], "counts": str}`` (column-major, as pycocotools writes it).
A region is ``{"point": [x, y]}``, ``{"box": [x1, y1, x2, y2]}`` or ``{"mask": RLE}``.
Every error is a ValueError whose text quotes at most a short, depth-limited excerpt of the input
(a list nested thousands of levels deep is quoted as ``[[[[[[...]]]]]]``, never recursed into).
"""

from __future__ import annotations

import reprlib
import warnings

import numpy as np
from pycocotools import mask as mask_utils

from perception.types import Region

_EXCERPT = reprlib.Repr()  # keyword arguments need Python 3.12
_EXCERPT.maxlevel, _EXCERPT.maxlist, _EXCERPT.maxdict, _EXCERPT.maxstring, _EXCERPT.maxother = 3, 4, 4, 40, 40


def excerpt(value) -> str:
    """A short, depth-limited repr of untrusted input for error messages."""
    return _EXCERPT.repr(value)


# --- RLE ------------------------------------------------------------------------------------


def rle_encode(mask: np.ndarray) -> dict:
    """H x W bool mask -> COCO RLE {"size": [H, W], "counts": str}."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"rle_encode needs an H x W mask; got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_size(rle: dict) -> tuple[int, int]:
    """The (h, w) a COCO RLE claims, checked without decoding anything."""
    try:
        h, w = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ValueError(f"not a COCO RLE (needs 'size' [h, w] and 'counts'): {excerpt(rle)}") from None
    if h < 0 or w < 0:
        raise ValueError(f"RLE size must be non-negative; got {[h, w]}")
    return h, w


def rle_decode(rle: dict, max_pixels: int | None = None) -> np.ndarray:
    """COCO RLE (counts as str, bytes, or an uncompressed list of run lengths) -> H x W bool.

    max_pixels: refuse an RLE claiming more pixels than this before decoding (a few bytes of RLE
    can claim any size)."""
    h, w = rle_size(rle)
    if max_pixels is not None and h * w > max_pixels:
        raise ValueError(f"RLE mask claims {h}x{w} pixels, over the limit of {max_pixels:,}")
    try:
        counts = rle["counts"]
    except (KeyError, TypeError):
        raise ValueError(f"not a COCO RLE (needs 'size' [h, w] and 'counts'): {excerpt(rle)}") from None
    if isinstance(counts, list):
        if not all(isinstance(c, (int, np.integer)) for c in counts):
            raise ValueError(f"uncompressed RLE counts must be integers; got {excerpt(counts)}")
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {h}*{w}={h * w}")
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, (str, bytes)):
        compressed = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"RLE counts must be str, bytes or a list; got {type(counts).__name__}")
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(compressed).astype(bool)


# --- regions --------------------------------------------------------------------------------


def plain_number(v):
    """A coordinate as JSON writes it best: 3.0 -> 3, 2.5 -> 2.5."""
    f = float(v)
    return int(f) if f.is_integer() else f


def region_to_json(region: Region) -> dict:
    """Region -> {"point": [x, y]} | {"box": [x1, y1, x2, y2]} | {"mask": RLE}."""
    if region.point is not None:
        return {"point": [plain_number(v) for v in region.point]}
    if region.box is not None:
        return {"box": [plain_number(v) for v in region.box]}
    return {"mask": rle_encode(region.mask)}


def region_from_json(d: dict, size: tuple[int, int] | None = None) -> Region:
    """Inverse of region_to_json. size: (h, w) of the image; a mask of another size is an error,
    found before the RLE is decoded."""
    if not isinstance(d, dict) or len(set(d) & {"point", "box", "mask"}) != 1:
        raise ValueError(f"a region needs exactly one of 'point', 'box' or 'mask'; got {excerpt(d)}")
    for key, n in (("point", 2), ("box", 4)):
        if key in d:
            values = d[key]
            if not isinstance(values, (list, tuple)) or any(isinstance(v, (list, tuple, dict)) for v in values):
                raise ValueError(f"region {key} must be a list of {n} numbers; got {excerpt(values)}")
            return Region(**{key: tuple(values)})
    if not isinstance(d["mask"], dict):
        raise ValueError("region mask must be a COCO RLE object {'size': [h, w], 'counts': ...}")
    if size is not None:
        h, w = rle_size(d["mask"])
        if (h, w) != tuple(size):
            raise ValueError(f"region mask is {h}x{w} (h x w), image is {size[0]}x{size[1]}")
    return Region(mask=rle_decode(d["mask"]))
