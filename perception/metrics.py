"""Metric functions of the ShapesRef spec, pure and small. Boxes are pixel corners; masks bool."""

from __future__ import annotations

import re

import numpy as np

from perception.geometry import box_iou, mask_iou


def acc_at(ious, thr: float = 0.5) -> float:
    """Fraction of IoUs >= thr (0.0 for no items)."""
    ious = np.asarray(ious, float)
    return float((ious >= thr).mean()) if len(ious) else 0.0


def miou(ious) -> float:
    return float(np.mean(ious)) if len(ious) else 0.0


def ciou(inters, unions) -> float:
    """Cumulative IoU: summed intersections over summed unions."""
    u = float(np.sum(unions))
    return float(np.sum(inters)) / u if u else 0.0


def mask_inter_union(pred, gt) -> tuple[int, int]:
    if pred is None:
        return 0, int(gt.sum())
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def match_boxes(pred: list, gt: list, thr: float = 0.5) -> int:
    """Number of one-to-one matches with box IoU >= thr (maximum matching)."""
    if not pred or not gt:
        return 0
    from scipy.optimize import linear_sum_assignment

    iou = np.array([[box_iou(p, g) for g in gt] for p in pred])
    ok = (iou >= thr).astype(float)
    r, c = linear_sum_assignment(-(ok + 1e-3 * iou))
    return int(ok[r, c].sum())


def prf(n_match: int, n_pred: int, n_gt: int) -> dict:
    p = n_match / n_pred if n_pred else 0.0
    r = n_match / n_gt if n_gt else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def contains_words(answer: str, expected: list) -> bool:
    """Every expected phrase appears in the answer as whole words (case-insensitive)."""
    a = answer.lower()
    return all(re.search(rf"(?<![\w]){re.escape(w.lower())}(?![\w])", a) for w in expected)


_NEGATION = re.compile(r"(?<![\w])(no|not|none)(?![\w])", re.IGNORECASE)
_ZERO = re.compile(r"(?<![\w.])0(?!\w|\.\d)")  # "0", "0.", "(0)"; not "10", "0.5", "0th"


def says_none(text: str, counting: bool = False) -> bool:
    """The answer says there is nothing (SHAPESREF.md v2, N-acc): one of the words "no", "not",
    "none" (whole words, any case); for a counting question it must state the number 0 (a
    standalone "0"), as the spec asks ("counting: states 0")."""
    if counting:
        return bool(_ZERO.search(text))
    return bool(_NEGATION.search(text))


def rejects(text: str, n_objects: int, counting: bool = False) -> bool:
    """A no-target request answered right: it grounds nothing and says so (``says_none``)."""
    return n_objects == 0 and says_none(text, counting)


def has_tiny_object(masks, max_pixels: int = 4) -> bool:
    """Some grounded object's mask has ``max_pixels`` or fewer pixels (a placeholder, not an
    object: ShapesRef's smallest object has far more). ``None`` masks (no mask head) are skipped."""
    return any(m is not None and int(np.count_nonzero(m)) <= max_pixels for m in masks)


__all__ = ["says_none", "rejects", "has_tiny_object", "acc_at", "miou", "ciou", "mask_inter_union", "match_boxes", "prf", "contains_words", "box_iou", "mask_iou"]
