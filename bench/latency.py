"""Server-side latency of the tiny model on this machine (no timed assertions in tests; this is the check).

    python bench/latency.py [--model tiny] [--n 60] [--out bench/results/latency.json]

Measures, on held-out ShapesRef scenes, batch 1, after a warm-up:
- click -> region mask shown: ``segment_point`` plus drawing the overlay PNG the app shows;
- a grounding turn: ``chat`` on "Find the ..." with a fresh image (features not cached) and with the
  image already cached (the app's case after upload/click);
- the same through the app's handler functions when the app package is importable.
Targets (issue "The Gradio chat app"): click <= 150 ms, grounding turn <= 400 ms median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere


def _stats(xs):
    xs = sorted(1000 * x for x in xs)
    return {"median_ms": statistics.median(xs), "p95_ms": xs[int(0.95 * (len(xs) - 1))], "n": len(xs)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=30_000_000)
    ap.add_argument("--out", default="bench/results/latency.json")
    a = ap.parse_args(argv)

    import torch

    import perception
    from perception.data.shapesref import draw_scene, make_turn
    from perception.render import draw_overlay

    pipe = perception.load_pipeline(a.model, device="cpu")
    scenes = []
    for i in range(a.n):
        rng = np.random.default_rng(a.seed + i)
        s = draw_scene(rng)
        # the wanted type may be impossible in this scene (S, R); ground_A always is
        t = make_turn(s, rng, ["ground_A", "ground_S", "ground_R"][i % 3]) or make_turn(s, rng, "ground_A")
        k = int(rng.integers(len(s.objects)))
        ys, xs = np.nonzero(s.objects[k].mask)
        scenes.append((s.image, t.user, (int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))))
    pipe.chat(scenes[0][0], scenes[0][1])  # warm-up
    cold, warm, click = [], [], []
    for img, prompt, pt in scenes:
        img = img.copy()
        t0 = time.perf_counter(); pipe.chat(img, prompt); cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); pipe.chat(img, prompt); warm.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = pipe.segment_point(img, pt)
        draw_overlay(img, [perception.Grounding(box=(0, 0, 1, 1), mask=m)], show_boxes=False)
        click.append(time.perf_counter() - t0)
    rep = {
        "model": a.model, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "grounding_turn_new_image": _stats(cold), "grounding_turn_cached_image": _stats(warm), "click_to_mask_shown": _stats(click),
        "targets_ms": {"click_to_mask_shown": 150, "grounding_turn": 400},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
