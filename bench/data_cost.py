"""CPU cost of a recipe's sample stream: drawing ShapesRef samples and collating them into batches.

    python bench/data_cost.py [--config configs/tiny_shapesref_v2.yaml] [--samples 160] [--per-task 20]

The trainer's data worker (``data.num_workers``) does this work on the same cores as the training
step, so on the 2-core machine every millisecond here is time a step does not get. Prints the CPU
milliseconds (this process, one torch thread) per sample for the recipe's own stream (its task
mix and multi-turn share) and its collation (the recipe's model and collator: tokenising, image and
mask resizing, every auxiliary head's targets), then drawing alone per task. Compare with a
training step's cost (``python bench/step_cost.py``) to see what share of the machine feeding the
trainer takes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perception.data.shapesref import make_sample  # noqa: E402
from perception.data.streams import build_stream  # noqa: E402
from perception.train import build_model, load_train_config, make_collator  # noqa: E402


def _ms(f) -> float:
    t = time.process_time()
    f()
    return 1000 * (time.process_time() - t)


def measure(config: str, n_samples: int, per_task: int) -> dict:
    """{"samples", "batch_size", "draw_ms", "collate_ms" (CPU ms per sample), "tasks": {task: draw ms}}."""
    tc = load_train_config(config, ["init_from=null"])  # the model's shape is all collation needs
    if tc.data.source != "shapesref":
        raise ValueError(f"{config} streams {tc.data.source!r}; this measures the ShapesRef stream")
    model = build_model(tc)
    collate = make_collator(model, tc)
    stream = iter(build_stream(tc.data, tc.seed))
    next(stream)  # imports and first-call set-up are not counted
    samples, bs = [], tc.batch_size
    draw = _ms(lambda: samples.extend(next(stream) for _ in range(n_samples)))
    col = _ms(lambda: [collate(samples[i:i + bs]) for i in range(0, len(samples), bs)])
    tasks = {task: _ms(lambda: [make_sample(1_000_000 + s, tasks=[task]) for s in range(per_task)]) / per_task
             for task in (tc.data.tasks if per_task else [])}
    return {"samples": n_samples, "batch_size": bs, "draw_ms": draw / n_samples, "collate_ms": col / n_samples, "tasks": tasks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/tiny_shapesref_v2.yaml"))
    p.add_argument("--samples", type=int, default=160, help="samples of the recipe's stream (collated in batches of its batch_size)")
    p.add_argument("--per-task", type=int, default=20, help="samples drawn per task for the per-task rows (0: skip)")
    args = p.parse_args(argv)
    if args.samples < 1 or args.per_task < 0:
        print("error: --samples must be >= 1 and --per-task >= 0", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    try:
        r = measure(args.config, args.samples, args.per_task)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bs = r["batch_size"]
    print(f"{args.config}: {r['samples']} samples, batch {bs}, one thread, CPU ms per sample")
    print(f"  draw (make_sample, the recipe's mix)   {r['draw_ms']:7.1f}")
    print(f"  collate (the recipe's collator)        {r['collate_ms']:7.1f}")
    print(f"  per batch of {bs}: {(r['draw_ms'] + r['collate_ms']) * bs / 1000:.2f} CPU s")
    if r["tasks"]:
        print("drawing alone, per task:")
        for task, ms in r["tasks"].items():
            print(f"  {task:18s} {ms:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
