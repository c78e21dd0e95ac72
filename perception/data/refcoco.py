"""RefCOCO, RefCOCO+ and RefCOCOg in the standard ``refer`` layout.

Files: ``{root}/{dataset}/instances.json`` (COCO instances: images, annotations with ``bbox``
[x, y, w, h] and ``segmentation`` polygons or RLE, categories) and
``{root}/{dataset}/refs({split_by}).p`` (a pickled list of refs: ref_id, ann_id, image_id, split,
sentences [{sent, raw, ...}], category_id, file_name). ``root`` may also be the dataset folder
itself. Images are COCO train2014 files named by ``instances.json``'s ``file_name``.

Each item is one referring sentence: a Sample whose single object is the referred annotation
(box as pixel corners, x2 = x + w; mask rasterised at image size) and one turn
``"Find {sent}."`` -> ``grounded(sent)``. With ``per_ref=True`` each item is a ref instead, with
one turn per sentence.

The refs pickle is read with a restricted unpickler that accepts plain data only.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from perception.data.sample import Sample, Turn
from perception.tokens import grounded

DATASETS = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
SPLITS_BY = ("unc", "umd", "google")
_IMAGE_DIRS = ("images/mscoco/images/train2014", "images/train2014", "train2014", "coco/train2014", "images")

_SAFE_GLOBALS = {
    ("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool")
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refuses to load {module}.{name}: a refs file may hold only plain data "
            "(dict, list, str, int, float)"
        )


def load_refs(path: str | Path) -> list:
    """Read a ``refs(*).p`` pickle with plain-data-only unpickling. Raises ValueError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"refs file not found: {path}")
    try:
        refs = _PlainDataUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8", errors="replace").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"cannot load refs file {path}: {e}") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"refs file {path} must hold a list of dicts; got {type(refs).__name__}")
    return refs


def ann_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """A COCO annotation's segmentation (polygons, uncompressed or compressed RLE) -> H x W bool."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, dict):
        if isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            c = seg["counts"]
            rle = {"size": list(seg["size"]), "counts": c.encode("ascii") if isinstance(c, str) else c}
    else:
        raise ValueError(f"annotation {ann.get('id')}: unsupported segmentation {type(seg).__name__}")
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode(rle).astype(bool)
    if m.shape != (height, width):
        raise ValueError(f"annotation {ann.get('id')}: mask {m.shape} but image is {height}x{width}")
    return m


def _clean_sentence(s: str) -> str:
    return " ".join(s.split()).rstrip(" .")


class RefCocoDataset:
    """Map-style dataset of one RefCOCO-family split (see module docstring).

    root: data root (or the dataset folder). dataset: "refcoco" | "refcoco+" | "refcocog".
    split: "train" | "val" | "testA" | "testB" | "test" (what the split_by file holds).
    split_by: "unc" | "umd" | "google" (default unc, umd for refcocog). image_dir: folder of
    the COCO images (default: the first of the usual places under root that exists).
    per_ref: one item per ref with one turn per sentence, instead of one item per sentence.
    """

    def __init__(self, root, dataset: str = "refcoco", split: str = "val", split_by: str | None = None,
                 image_dir=None, per_ref: bool = False):
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {list(DATASETS)}; got {dataset!r}")
        split_by = split_by or DATASETS[dataset]
        if split_by not in SPLITS_BY:
            raise ValueError(f"split_by must be one of {SPLITS_BY}; got {split_by!r}")
        root = Path(root)
        folder = root / dataset if (root / dataset).is_dir() else root
        inst_path = folder / "instances.json"
        if not inst_path.is_file():
            raise ValueError(f"COCO instances file not found: {inst_path}")
        try:
            inst = json.loads(inst_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{inst_path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        refs = load_refs(folder / f"refs({split_by}).p")
        self.images = {im["id"]: im for im in inst.get("images", [])}
        self.anns = {a["id"]: a for a in inst.get("annotations", [])}
        self.categories = {c["id"]: c.get("name", "") for c in inst.get("categories", [])}
        self.refs = [r for r in refs if r.get("split") == split]
        if not self.refs:
            have = sorted({str(r.get("split")) for r in refs})
            raise ValueError(f"no refs with split {split!r} in {folder / f'refs({split_by}).p'}; splits: {have}")
        for r in self.refs:
            if r["ann_id"] not in self.anns or r["image_id"] not in self.images:
                raise ValueError(f"ref {r.get('ref_id')}: annotation {r['ann_id']} or image {r['image_id']} "
                                 f"missing from {inst_path}")
        if image_dir is None:
            first = self.images[self.refs[0]["image_id"]]["file_name"]
            cands = [root / d for d in _IMAGE_DIRS] + [folder / "images", folder, root]
            image_dir = next((c for c in cands if (c / first).is_file()), cands[0])
        self.image_dir = Path(image_dir)
        self.dataset, self.split, self.split_by, self.per_ref = dataset, split, split_by, per_ref
        self.index = ([(k, None) for k in range(len(self.refs))] if per_ref else
                      [(k, j) for k, r in enumerate(self.refs) for j in range(len(r.get("sentences", [])))])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        k, j = self.index[i]
        ref = self.refs[k]
        info = self.images[ref["image_id"]]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise ValueError(f"image not found: {path} (ref {ref.get('ref_id')}); pass image_dir=")
        with Image.open(path) as im:
            image = im.convert("RGB")
        W, H = image.size
        if (info.get("width", W), info.get("height", H)) != (W, H):
            raise ValueError(f"{path} is {W}x{H} but instances.json says {info['width']}x{info['height']}")
        ann = self.anns[ref["ann_id"]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        sents = ref["sentences"] if j is None else [ref["sentences"][j]]
        turns = []
        for s in sents:
            text = _clean_sentence(s.get("sent") or s.get("raw", ""))
            turns.append(Turn(user=f"Find {text}.", assistant=grounded(text), targets=[0], task=self.dataset))
        return Sample(
            image=image,
            boxes=np.array([[x, y, x + w, y + h]], np.float32),
            masks=ann_mask(ann, H, W)[None],
            labels=[self.categories.get(ref.get("category_id", ann.get("category_id")), "")],
            turns=turns,
            meta={"source": self.dataset, "split": self.split, "split_by": self.split_by,
                  "ref_id": ref.get("ref_id"), "ann_id": ref["ann_id"], "image_id": ref["image_id"],
                  "sentence_index": j},
        )


def load_refcoco(root, dataset: str = "refcoco", split: str = "val", split_by: str | None = None,
                 image_dir=None) -> RefCocoDataset:
    """One RefCOCO-family split as a lazy map-style dataset of Samples, one per sentence."""
    return RefCocoDataset(root, dataset=dataset, split=split, split_by=split_by, image_dir=image_dir)
