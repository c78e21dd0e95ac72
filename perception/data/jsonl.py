"""The native on-disk format: one JSON object per line, images (and optional mask PNGs) beside it.

A line::

    {"image": "images/000123.png", "width": W, "height": H,
     "objects": [{"box": [x1, y1, x2, y2], "mask": {"size": [H, W], "counts": "..."},
                  "label": "small red circle"}],
     "turns": [{"user": ..., "assistant": ..., "regions": [{"point": [x, y]} | {"box": [...]} |
                {"mask": RLE}], "targets": [...], "task": ..., "expect": [...]}],
     "meta": {...}}

Paths are relative to the JSONL file's folder, or absolute. Frames: image pixels, x = column,
y = row; boxes are corners with x2/y2 exclusive. A mask is COCO RLE (``counts`` a string,
column-major as pycocotools writes it; perception/maskformat.py reads and writes it and the
regions) or ``"mask_png": "masks/....png"`` (nonzero = inside).
An object's ``box`` may be left out; it is then the tight box of its mask.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from perception.data.sample import Sample, Turn
from perception.geometry import box_from_mask
from perception.maskformat import plain_number, region_from_json, region_to_json, rle_decode, rle_encode

IMAGE_DIR = "images"
JSONL_NAME = "data.jsonl"


# --- writing --------------------------------------------------------------------------------


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return None  # arrays, images and other objects are not written


def sample_to_json(sample: Sample, image_path: str) -> dict:
    """One JSONL record for ``sample`` whose image lies at ``image_path``."""
    W, H = sample.image.size
    objects = []
    for k in range(len(sample.boxes)):
        objects.append({
            "box": [plain_number(v) for v in sample.boxes[k]],
            "mask": rle_encode(sample.masks[k]),
            "label": sample.labels[k] if k < len(sample.labels) else "",
        })
    turns = [{
        "user": t.user, "assistant": t.assistant, "regions": [region_to_json(r) for r in t.regions],
        "targets": [int(i) for i in t.targets], "task": t.task, "expect": list(t.expect),
    } for t in sample.turns]
    return {"image": image_path, "width": W, "height": H, "objects": objects, "turns": turns,
            "meta": _jsonable(sample.meta)}


def write_jsonl(samples: Iterable[Sample], out_dir: str | Path) -> Path:
    """Write samples to ``out_dir``: images/NNNNNN.png and data.jsonl. Returns the JSONL path."""
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    path = out / JSONL_NAME
    with open(path, "w", encoding="utf-8") as f:
        for i, s in enumerate(samples):
            rel = f"{IMAGE_DIR}/{i:06d}.png"
            s.image.save(out / rel)
            f.write(json.dumps(sample_to_json(s, rel), separators=(",", ":")) + "\n")
    return path


# --- reading --------------------------------------------------------------------------------


def _load_image(path: Path, where: str) -> Image.Image:
    if not path.is_file():
        raise ValueError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise ValueError(f"{where}: cannot read image {path}: {e}") from None


def _object_mask(o: dict, root: Path, H: int, W: int, where: str) -> np.ndarray:
    if "mask" in o:
        m = rle_decode(o["mask"])
    elif "mask_png" in o:
        p = Path(o["mask_png"])
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise ValueError(f"{where}: mask file not found: {p}")
        with Image.open(p) as im:
            m = np.array(im.convert("L")) > 0
    else:
        raise ValueError(f"{where}: object needs 'mask' (RLE) or 'mask_png'")
    if m.shape != (H, W):
        raise ValueError(f"{where}: mask is {m.shape[1]}x{m.shape[0]} (w x h), image is {W}x{H}")
    return m


def sample_from_json(d: dict, root: str | Path, where: str = "<record>") -> Sample:
    """Build a Sample from one parsed record; ``root`` resolves relative paths.

    Errors raise ValueError prefixed with ``where`` (e.g. "data.jsonl:12").
    """
    root = Path(root)
    try:
        if not isinstance(d, dict) or "image" not in d:
            raise ValueError("record needs an 'image' path")
        p = Path(d["image"])
        image = _load_image(p if p.is_absolute() else root / p, where)
        W, H = image.size
        if ("width" in d and int(d["width"]) != W) or ("height" in d and int(d["height"]) != H):
            raise ValueError(f"record says {d.get('width')}x{d.get('height')} but image {p} is {W}x{H}")
        objs = d.get("objects", [])
        masks = [_object_mask(o, root, H, W, where) for o in objs]
        boxes = []
        for o, m in zip(objs, masks):
            b = o.get("box")
            if b is None:
                b = box_from_mask(m) or (0.0, 0.0, 0.0, 0.0)
            if len(b) != 4:
                raise ValueError(f"box must be [x1, y1, x2, y2]; got {b}")
            boxes.append([float(v) for v in b])
        turns = []
        for t in d.get("turns", []):
            targets = [int(i) for i in t.get("targets", [])]
            if any(i < 0 or i >= len(objs) for i in targets):
                raise ValueError(f"turn targets {targets} out of range for {len(objs)} objects")
            turns.append(Turn(
                user=t["user"], assistant=t["assistant"],
                regions=[region_from_json(r, (H, W)) for r in t.get("regions", [])],
                targets=targets, task=t.get("task", ""), expect=list(t.get("expect", [])),
            ))
        return Sample(
            image=image,
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            masks=np.stack(masks) if masks else np.zeros((0, H, W), bool),
            labels=[o.get("label", "") for o in objs],
            turns=turns,
            meta=dict(d.get("meta") or {}, source_line=where),
        )
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{where}: malformed record ({type(e).__name__}: {e})") from None


def _parse(line: str, where: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: str | Path) -> Iterator[Sample]:
    """Lazily yield the Samples of a JSONL file (images are read as each line is reached)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"JSONL file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            yield sample_from_json(_parse(line, where), path.parent, where)


class JsonlDataset:
    """Map-style dataset over a JSONL file; records are parsed and images read on access.

    Only the byte offset of each non-empty line is kept in memory.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"JSONL file not found: {self.path}")
        self._offsets: list[tuple[int, int]] = []  # (byte offset, line number)
        with open(self.path, "rb") as f:
            pos, lineno = 0, 0
            for line in f:
                lineno += 1
                if line.strip():
                    self._offsets.append((pos, lineno))
                pos += len(line)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> Sample:
        try:
            pos, lineno = self._offsets[i]  # negative indices count from the end, as for a list
        except IndexError:
            raise IndexError(f"index {i} out of range for {len(self)} samples") from None
        with open(self.path, "rb") as f:
            f.seek(pos)
            line = f.readline().decode("utf-8")
        where = f"{self.path}:{lineno}"
        return sample_from_json(_parse(line, where), self.path.parent, where)
