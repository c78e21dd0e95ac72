"""Where an object-token model's superlatives go wrong (issue 14).

On ``--count`` validation scenes (seeds from ``--seed``; keep them away from the evaluation seeds),
one superlative request per scene that has one ("Find the topmost red shape."), answered through
the pipeline. The answer's first object is matched to the scene's objects by mask IoU (>= 0.5) and
called

- ``right``: the referent;
- ``wrong_end``: another object the phrase names (the filter was right, the order was not);
- ``unnamed``: an object the phrase does not name;
- ``none``: no object, or a mask that matches none of the scene's objects;

per superlative word (leftmost, rightmost, topmost, bottommost) and overall. ``--proposals oracle`` gives the
scene's masks as the object tokens (selection alone); ``model``, the model's own proposals.
``--transpose`` asks about the transposed scene (x and y swapped, "leftmost" <-> "topmost",
"rightmost" <-> "bottommost"): the same geometric configurations asked along the other axis, which
tells whether an axis is weak in the words or in the geometry.

    python bench/superlative_probe.py checkpoints/tiny --proposals oracle
    python bench/superlative_probe.py checkpoints/tiny --proposals oracle --transpose
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORDS = ["leftmost", "rightmost", "topmost", "bottommost"]
TRANSPOSED = {"leftmost": "topmost", "topmost": "leftmost", "rightmost": "bottommost", "bottommost": "rightmost"}
CATEGORIES = ["right", "wrong_end", "unnamed", "none"]


def scene_request(seed: int, transpose: bool):
    """(image, object masks (N, H, W) bool, request text, word, referent, named objects) for the
    superlative drawn from validation scene ``seed``, or None when the scene has none."""
    from PIL import Image

    from perception.data.shapesref import _groups, _pick_expression, attribute_key, draw_scene, s_expressions

    rng = np.random.default_rng(seed)
    scene = draw_scene(rng)
    objs, (W, H) = scene.objects, scene.image.size
    exprs = s_expressions(objs, W, H)
    if not exprs:
        return None
    expr, ref = _pick_expression(rng, exprs)
    template = next(t for t, e, i in exprs if e == expr and i == ref)
    word, kind = template[1], template[2]
    named = _groups(objs, kind)[attribute_key(objs[ref], kind)]
    image, masks = scene.image, np.stack([o.mask for o in objs])
    if transpose:
        image = image.transpose(Image.Transpose.TRANSPOSE)
        masks = np.ascontiguousarray(masks.transpose(0, 2, 1))
        expr, word = expr.replace(word, TRANSPOSED[word]), TRANSPOSED[word]
    return image, masks, f"Find {expr}.", word, ref, named


@torch.no_grad()
def probe(pipe, seed: int, count: int, proposals: str = "oracle", transpose: bool = False) -> dict:
    """{"overall": {"n": requests, category: share of them}, and the same per superlative word}."""
    from perception.geometry import mask_iou

    rows = []
    for i in range(count):
        req = scene_request(seed + i, transpose)
        if req is None:
            continue
        image, masks, text, word, ref, named = req
        if proposals == "oracle":
            pipe.use_objects(image, list(masks))
        answer = pipe.chat(image, text, max_new_tokens=16)
        got = None
        if answer.objects and answer.objects[0].mask is not None:
            ious = [mask_iou(answer.objects[0].mask, m) for m in masks]
            got = int(np.argmax(ious)) if max(ious) >= 0.5 else None
        cat = "none" if got is None else "right" if got == ref else "wrong_end" if got in named else "unnamed"
        rows.append({"word": word, "category": cat})
    out = {"overall": _shares(rows)}
    for w in WORDS:
        out[w] = _shares([r for r in rows if r["word"] == w])
    return out


def _shares(rows: list) -> dict:
    n = len(rows)
    return {"n": n, **{c: sum(r["category"] == c for r in rows) / max(1, n) for c in CATEGORIES}}


def main(argv=None) -> int:
    import perception

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an object-token checkpoint folder, or a preset name")
    ap.add_argument("--seed", type=int, default=12_000_000)
    ap.add_argument("--count", type=int, default=200, help="scenes (those without a superlative are skipped)")
    ap.add_argument("--proposals", choices=["oracle", "model"], default="oracle")
    ap.add_argument("--transpose", action="store_true", help="ask about the transposed scenes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON report path")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = perception.load_pipeline(args.model, device="cpu")
    if getattr(pipe.model, "object_tokens", None) is None:
        print("error: the model has no object tokens (objects.enabled)", file=sys.stderr)
        return 2
    rep = probe(pipe, args.seed, args.count, args.proposals, args.transpose)
    for key, r in rep.items():
        print(f"{key:10s} n={r['n']:3d}  " + "  ".join(f"{c} {r[c]:.2f}" for c in CATEGORIES))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "seed": args.seed, "count": args.count,
                                              "proposals": args.proposals, "transpose": args.transpose, **rep}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
