"""Same-as-a-region requests by attribute and region kind (issue 14: what keeps same-as-region F1 short).

On ``--count`` validation scenes (seeds from ``--seed``; keep them away from the evaluation seeds)
every scene is asked "Find all the objects with the same {color, shape} as <region1>." once per
attribute and region kind (point, box, mask: ShapesRef v2's generator, ``same_as_region``). An
answer's objects are matched to the scene's by mask IoU >= 0.5. Reported per attribute x kind:
recall (targets found / targets, over requests with a target), precision (found / objects
grounded, same requests), and for requests without a target the share answered with no object.

    python bench/same_region_probe.py tiny --count 60 --out bench/results/gates/same_region_probe.json
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
ATTRIBUTES = ("color", "shape")


def probe(pipe, seed: int, count: int) -> dict:
    """{"attribute/kind": {"targets", "found", "grounded", "recall", "precision", "none_requests", "none_right"}}."""
    from perception.data import shapesref_v2 as v2
    from perception.data.shapesref import REGION_KINDS, draw_scene
    from perception.geometry import mask_iou

    stats = {f"{a}/{k}": {"targets": 0, "found": 0, "grounded": 0, "none_requests": 0, "none_right": 0}
             for a in ATTRIBUTES for k in REGION_KINDS}
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        scene = draw_scene(rng)
        for attribute in ATTRIBUTES:
            for kind in REGION_KINDS:
                turn = v2.same_as_region(scene, rng, attribute=attribute, region_kind=kind)
                answer = pipe.chat(scene.image, turn.user, regions=turn.regions)
                got = set()
                for o in answer.objects:
                    ious = [mask_iou(o.mask, t.mask) for t in scene.objects]
                    if max(ious) >= 0.5:
                        got.add(int(np.argmax(ious)))
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


def main(argv=None) -> int:
    import perception

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint folder, or a preset name")
    ap.add_argument("--seed", type=int, default=12_500_000)
    ap.add_argument("--count", type=int, default=60, help="validation scenes (six requests each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON report path")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = perception.load_pipeline(args.model, device="cpu")
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
