"""Same-as-a-region requests by attribute and region kind (issue 14: what keeps same-as-region F1 short).

On ``--count`` validation scenes (seeds from ``--seed``; keep them away from the evaluation seeds)
every scene is asked "Find all the objects with the same {color, shape} as <region1>." once per
attribute and region kind (point, box, mask: ShapesRef v2's generator, ``same_as_region``). An
answer's objects are matched to the scene's by mask IoU >= 0.5. Reported per attribute x kind:
recall (targets found / targets, over requests with a target), precision (found / objects
grounded, same requests), and for requests without a target the share answered with no object.

With ``--misses``, where each target of the requests with one is lost, read from the decoder
(``gate_probe.recording_decoders``): found; "no proposal" (no proposal has mask IoU >= 0.5 with
it); "match gate" (its proposal's match probability is under ``objects.match_gate``, so no
``<loc>`` may choose it); "listing ended" (it passed the gate but the answer ended, or never
started, without it). Per category, quantiles of the target's match probability and of two of
its relation features (``ObjectTokens.region_relations``): the probability that it and the region
read the same word for the asked attribute, and the cosine of its code with the region's
embedding (1: "the region is this object"), and for a model with ``objects.region_overlap`` the
box IoU of its proposal with the region (the same object by place); the share of look-alikes
(targets of the region object's colour *and* shape); beside them, the same for the region's own object.

    python bench/same_region_probe.py tiny --count 60 --out bench/results/gates/same_region_probe.json
    python bench/same_region_probe.py tiny --count 100 --misses --out bench/results/stop27/same_region_misses.json
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
sys.path.insert(0, str(ROOT / "bench"))  # gate_probe
ATTRIBUTES = ("color", "shape")


def scene_object(mask: np.ndarray, scene) -> int | None:
    """The index of the scene object that ``mask`` (H, W pixels) has mask IoU >= 0.5 with, or None."""
    from perception.geometry import mask_iou

    ious = [mask_iou(mask, o.mask) for o in scene.objects]
    return int(np.argmax(ious)) if max(ious) >= 0.5 else None


def requests(seed: int, count: int):
    """(scene, attribute, region kind, turn) for every request of the probes: ``count`` scenes
    (scene i from ``default_rng(seed + i)``), each asked once per attribute and region kind."""
    from perception.data import shapesref_v2 as v2
    from perception.data.shapesref import REGION_KINDS, draw_scene

    for i in range(count):
        rng = np.random.default_rng(seed + i)
        scene = draw_scene(rng)
        for attribute in ATTRIBUTES:
            for kind in REGION_KINDS:
                yield scene, attribute, kind, v2.same_as_region(scene, rng, attribute=attribute, region_kind=kind)


def probe(pipe, seed: int, count: int) -> dict:
    """{"attribute/kind": {"targets", "found", "grounded", "recall", "precision", "none_requests", "none_right"}}."""
    from perception.data.shapesref import REGION_KINDS

    stats = {f"{a}/{k}": {"targets": 0, "found": 0, "grounded": 0, "none_requests": 0, "none_right": 0}
             for a in ATTRIBUTES for k in REGION_KINDS}
    for scene, attribute, kind, turn in requests(seed, count):
        answer = pipe.chat(scene.image, turn.user, regions=turn.regions)
        got = {i for i in (scene_object(o.mask, scene) for o in answer.objects) if i is not None}
        s = stats[f"{attribute}/{kind}"]
        if turn.targets:
            s["targets"] += len(turn.targets)
            s["found"] += len(got & set(turn.targets))
            s["grounded"] += len(answer.objects)
        else:
            s["none_requests"] += 1
            s["none_right"] += not answer.objects
    for s in stats.values():
        s["recall"] = s["found"] / max(1, s["targets"])
        s["precision"] = s["found"] / max(1, s["grounded"])
    return stats


def region_object(scene, region) -> int | None:
    """The index of the scene object a drawn region (``shapesref._region``) was drawn from."""
    for i, o in enumerate(scene.objects):
        if region.point is not None and o.mask[region.point[1], region.point[0]]:
            return i
        if region.box is not None and tuple(int(v) for v in o.box) == tuple(region.box):
            return i
        if region.mask is not None and np.array_equal(o.mask, region.mask):
            return i
    return None


LOST = ("found", "no proposal", "match gate", "listing ended")
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def misses(pipe, seed: int, count: int) -> dict:
    """{"targets", "by": {category: {"n", "share", "look_alike", "match" / "same_word" / "cosine" / "overlap": quantiles}},
    "region_object": {"n", "same_word" / "cosine" / "overlap": quantiles}} over the same requests as ``probe``
    (only those with a target are asked). Categories: ``LOST``."""
    from gate_probe import recording_decoders

    groups = [list(g) for g in pipe.model.config.token_aux.attributes]
    column = {a: next(i for i, g in enumerate(groups) if w in g) for a, w in (("color", "red"), ("shape", "circle"))}
    cosine_col = len(groups)  # region_relations' features: G same-word probabilities, cosine, [box IoU,] 1
    oc = pipe.model.config.objects
    has_relation, has_overlap = oc.relation_scores, oc.region_overlap  # a model whose scores read no relation features has none to report
    thr = pipe.model.config.mask_head.mask_threshold
    gate = oc.match_gate
    seen = {c: [] for c in LOST}
    own = []
    records = []
    undo = recording_decoders(records)
    try:
        for scene, attribute, kind, turn in requests(seed, count):
            if not turn.targets:
                continue
            del records[:]
            answer = pipe.chat(scene.image, turn.user, regions=turn.regions)
            d = records[-1]["decoder"]
            b, objs = int(d._bidx), d.state.objects
            slot = {}  # scene object -> its proposal
            for j in objs.valid[b].nonzero().flatten().tolist():
                i_obj = scene_object(objs.pixel_mask(b, j, d.frame, thr), scene)
                if i_obj is not None:
                    slot.setdefault(i_obj, j)
            got = {i for i in (scene_object(o.mask, scene) for o in answer.objects) if i is not None}

            def feats(j):
                f = d._features if has_relation else None
                return {"match": 1.0 if d._match is None else float(d._match[j]),
                        "same_word": None if f is None else float(f[j, column[attribute]]),
                        "cosine": None if f is None else float(f[j, cosine_col]),
                        "overlap": None if f is None or not has_overlap else float(f[j, cosine_col + 1])}

            mine = region_object(scene, turn.regions[0])
            for t in turn.targets:
                j = slot.get(t)
                f = {} if j is None else feats(j)
                if t in got:
                    c = "found"
                elif j is None:
                    c = "no proposal"
                else:
                    c = "match gate" if f["match"] < gate else "listing ended"
                a, r = scene.objects[t], scene.objects[mine]
                seen[c].append({"look_alike": a.color == r.color and a.shape == r.shape, **f})
            if mine in slot:
                own.append(feats(slot[mine]))
    finally:
        undo()

    def q(values):
        values = [v for v in values if v is not None]
        return [round(float(v), 3) for v in np.quantile(values, QUANTILES)] if values else []

    total = sum(len(v) for v in seen.values())
    rep = {"targets": total, "quantiles": list(QUANTILES), "by": {}}
    for c, rows in seen.items():
        rows_f = [r for r in rows if "match" in r]
        rep["by"][c] = {"n": len(rows), "share": len(rows) / max(1, total),
                        "look_alike": sum(r["look_alike"] for r in rows) / max(1, len(rows)),
                        **{k: q([r[k] for r in rows_f]) for k in ("match", "same_word", "cosine", "overlap")}}
    rep["region_object"] = {"n": len(own), **{k: q([r[k] for r in own]) for k in ("same_word", "cosine", "overlap")}}
    return rep


def main(argv=None) -> int:
    import perception

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint folder, or a preset name")
    ap.add_argument("--seed", type=int, default=12_500_000)
    ap.add_argument("--count", type=int, default=60, help="validation scenes (six requests each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON report path")
    ap.add_argument("--misses", action="store_true", help="where each target is lost, with its match and relation features")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = perception.load_pipeline(args.model, device="cpu")
    if args.misses:
        rep = misses(pipe, args.seed, args.count)
        print(f"targets {rep['targets']}; quantiles {rep['quantiles']}")
        for c, r in rep["by"].items():
            print(f"{c:14s} {r['n']:4d} ({r['share']:.3f})  look-alikes {r['look_alike']:.2f}  match {r['match']}  same word {r['same_word']}  cosine {r['cosine']}  overlap {r['overlap']}")
        o = rep["region_object"]
        print(f"region's own object {o['n']:4d}  same word {o['same_word']}  cosine {o['cosine']}  overlap {o['overlap']}")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"model": args.model, "seed": args.seed, "count": args.count, **rep}, indent=1))
        return 0
    rep = probe(pipe, args.seed, args.count)
    for key, s in rep.items():
        print(f"{key:12s} recall {s['found']}/{s['targets']} = {s['recall']:.2f}  precision {s['precision']:.2f}  "
              f"no target answered with none {s['none_right']}/{s['none_requests']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "seed": args.seed, "count": args.count, **rep}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
