"""Turning whatever the user gave into a safe RGB PIL image, or a clear ValueError.

Accepts a PIL image, a path, bytes or an H x W (x C) uint8/uint16 array. Honours EXIF orientation,
takes the first frame of animations, converts L/LA/P/RGBA/CMYK/I;16/I/F to RGB (alpha over white),
and rejects images over the pixel limit *before* decoding them (decompression bombs).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from perception.limits import DEFAULT_LIMITS


def load_image(src, max_pixels: int | None = None) -> Image.Image:
    max_pixels = DEFAULT_LIMITS.max_image_pixels if max_pixels is None else max_pixels
    if src is None:
        raise ValueError("no image given")
    if isinstance(src, np.ndarray):
        src = _from_array(src)
    if isinstance(src, Image.Image):
        img = src
        _check_size(img, max_pixels)
    else:
        if isinstance(src, (bytes, bytearray)):
            if not src:
                raise ValueError("the image file is empty (0 bytes)")
            fp, name = io.BytesIO(src), "the uploaded bytes"
        elif isinstance(src, (str, os.PathLike)):
            name = os.fspath(src)
            if not os.path.isfile(name):
                raise ValueError(f"image file not found: {name}")
            if os.path.getsize(name) == 0:
                raise ValueError(f"the image file is empty (0 bytes): {name}")
            fp = name
        else:
            raise ValueError(f"unsupported image type {type(src).__name__}: give a PIL image, a path, bytes or an array")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                _check_size(img, max_pixels)
                img.seek(0)
                img.load()
        except ValueError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"{name} is over the limit of {max_pixels:,} pixels ({e})") from None
        except UnidentifiedImageError as e:
            raise ValueError(f"{name} is not a readable image ({type(e).__name__}: {e})") from None
        except (OSError, SyntaxError, EOFError) as e:
            raise ValueError(f"{name} could not be decoded (truncated or corrupt): {e}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the pixels as stored
        pass
    return to_rgb(img)


def _check_size(img: Image.Image, max_pixels: int) -> None:
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ValueError(f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}")


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"image array must be H x W or H x W x 1/3/4; got shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a / 257).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, 2)
    return Image.fromarray(a)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. 16-bit and float greys are rescaled to 8 bits; alpha goes over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")
