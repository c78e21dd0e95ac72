"""Are two checkpoint folders the same model? Weights tensor by tensor, and the saved config.

    python bench/same_weights.py runs/tiny-objects/checkpoint-002600 checkpoints/tiny [--out report.json]

Training is deterministic on one machine (the same seed and thread count give the same losses:
docs/RESULTS.md, stop 29), so a rerun of the recipe that reproduces the shipped weights shows that
the one command trains the shipped model, and its time is the recipe's time, without judging the
model again. Both folders are loaded as the app loads them (``from_pretrained``, any checkpoint
format), so a LoRA checkpoint compares its base and adapter tensors as loaded.

Prints whether every tensor is bitwise equal, else how many differ, the largest absolute
difference and the tensor it is in; and the config keys whose values differ (the inference gates
live there). Exit status 0 when the weights are equal, 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def compare_states(a: dict, b: dict) -> dict:
    """Two state dicts (name -> tensor) -> {"equal", "tensors", "differ", "max_abs", "worst", "only_a", "only_b"}.

    A tensor present in both with another shape counts as differing with max_abs inf."""
    common = sorted(set(a) & set(b))
    differ, worst, max_abs = [], None, 0.0
    for k in common:
        x, y = a[k], b[k]
        if x.shape != y.shape:
            d = float("inf")
        elif torch.equal(x, y):
            continue
        else:
            d = float((x.float() - y.float()).abs().max())
        differ.append(k)
        if worst is None or d > max_abs:
            worst, max_abs = k, d
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return {"equal": not differ and not only_a and not only_b, "tensors": len(common), "differ": len(differ),
            "max_abs": max_abs, "worst": worst, "only_a": only_a, "only_b": only_b}


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (missing on one side included)."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += config_differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def compare_folders(a: str, b: str) -> dict:
    from perception.checkpoint import from_pretrained

    ma, mb = from_pretrained(a), from_pretrained(b)
    rep = compare_states(ma.state_dict(), mb.state_dict())
    rep["config_differs"] = config_differences(ma.config.to_dict(), mb.config.to_dict())
    return {"a": str(a), "b": str(b), **rep}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="checkpoint folder")
    ap.add_argument("b", help="checkpoint folder")
    ap.add_argument("--out", help="also write the comparison as JSON")
    args = ap.parse_args(argv)
    rep = compare_folders(args.a, args.b)
    if rep["equal"]:
        print(f"same weights: all {rep['tensors']} tensors bitwise equal")
    else:
        print(f"weights differ: {rep['differ']} of {rep['tensors']} tensors, largest |difference| {rep['max_abs']:.3g} "
              f"(in {rep['worst']}); only in a: {rep['only_a'][:5]}, only in b: {rep['only_b'][:5]}")
    print("config: the same" if not rep["config_differs"] else f"config differs at: {', '.join(rep['config_differs'])}")
    if args.out:
        Path(args.out).write_text(json.dumps(rep, indent=1))
    return 0 if rep["equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
