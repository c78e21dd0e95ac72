"""Batched inference throughput: turns per second of ``Pipeline.chat_batch`` at several batch sizes.

    python bench/batch_throughput.py [--model tiny] [--n 48] [--sizes 1 4 8 16] [--repeats 3] [--threads 2]
                                     [--out bench/results/batch_throughput.json]

Requests: held-out ShapesRef one-object grounding requests (types A, S, R in turn; scenes from
seed 30,000,000, apart from training's 0..), each on its own image, so every turn computes its
image features (no cache hits). Each size answers all ``n`` requests ``size`` at a time; a repeat
times the whole pass, turns/s = n / seconds, and the median over ``repeats`` is reported (the
passes of all sizes alternate, so machine load drifts hit every size alike). ``chat`` one at a
time is timed as well (the baseline users had). The answers of every size are checked to equal
``chat``'s (text, raw, boxes, masks; the largest score difference is reported). Target (issue 16): turns/s at batch 8 >= 2.5x batch 1.

Two clocks: wall time (what a user waits for) and this process's CPU time (``time.process_time``).
On a machine other processes share, wall time measures the load as much as the code; with
``--threads 1`` turns per CPU-second do not depend on the load (with more threads it also counts
the threads' spin-waiting).
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


def requests(seed: int, n: int) -> list:
    """n (image, message) one-object grounding requests on held-out ShapesRef scenes."""
    from perception.data.shapesref import draw_scene, make_turn

    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        s = draw_scene(rng)
        # the wanted type may be impossible in this scene (S, R); ground_A always is
        t = make_turn(s, rng, ["ground_A", "ground_S", "ground_R"][i % 3]) or make_turn(s, rng, "ground_A")
        out.append((s.image, t.user))
    return out


def answer_all(pipe, reqs: list, size: int) -> list:
    """Every request answered, ``size`` at a time (0: ``chat`` one at a time)."""
    if size == 0:
        return [pipe.chat(img, msg) for img, msg in reqs]
    out = []
    for k in range(0, len(reqs), size):
        part = reqs[k:k + size]
        out += pipe.chat_batch([img for img, _ in part], [msg for _, msg in part])
    return out


def same_answer(a, b) -> bool:
    """Same text, raw answer, boxes and masks (scores are compared apart: ``score_gap``)."""
    return (a.raw == b.raw and a.text == b.text and len(a.objects) == len(b.objects)
            and all(o.box == q.box and np.array_equal(o.mask, q.mask) for o, q in zip(a.objects, b.objects)))


def score_gap(a, b) -> float:
    """The largest score difference between two same answers' objects."""
    return max((abs(o.score - q.score) for o, q in zip(a.objects, b.objects)), default=0.0)


def _row(n: int, wall: list, cpu: list) -> dict:
    return {"turns_per_s": n / statistics.median(wall), "turns_per_cpu_s": n / statistics.median(cpu),
            "pass_seconds": wall, "pass_cpu_seconds": cpu}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--n", type=int, default=48, help="requests per pass (a multiple of every size keeps batches full)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=30_000_000)
    ap.add_argument("--out", default="bench/results/batch_throughput.json")
    a = ap.parse_args(argv)
    if a.n < 1 or a.repeats < 1 or min(a.sizes) < 1:
        ap.error("--n, --repeats and every --sizes value must be >= 1")

    import torch

    import perception

    torch.set_num_threads(a.threads)
    pipe = perception.load_pipeline(a.model, device="cpu")
    reqs = requests(a.seed, a.n)
    reference = answer_all(pipe, reqs, 0)  # also the warm-up
    modes = [0] + list(a.sizes)  # 0: chat one at a time
    seconds = {m: [] for m in modes}
    cpu = {m: [] for m in modes}
    identical = {m: True for m in a.sizes}
    gap = {m: 0.0 for m in a.sizes}
    for _ in range(a.repeats):
        for m in modes:
            pipe._cache.clear()  # no feature-cache hits: every turn encodes its image
            t0, c0 = time.perf_counter(), time.process_time()
            answers = answer_all(pipe, reqs, m)
            seconds[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
            if m:
                identical[m] &= all(same_answer(x, y) for x, y in zip(reference, answers))
                gap[m] = max([gap[m]] + [score_gap(x, y) for x, y in zip(reference, answers)])
    per = {m: a.n / statistics.median(seconds[m]) for m in modes}
    per_cpu = {m: a.n / statistics.median(cpu[m]) for m in modes}
    rep = {
        "model": a.model,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"threads {torch.get_num_threads()}",
        "command": "python bench/batch_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "requests": a.n, "repeats": a.repeats,
        "load_average_1_5_15": os.getloadavg(),  # at the end of the run; > threads means other processes competed
        "chat_one_at_a_time": _row(a.n, seconds[0], cpu[0]),
        "chat_batch": {str(m): {**_row(a.n, seconds[m], cpu[m]), "speedup_vs_batch_1": per[m] / per[a.sizes[0]],
                                "cpu_speedup_vs_batch_1": per_cpu[m] / per_cpu[a.sizes[0]],
                                "answers_identical_to_chat": identical[m], "max_score_difference": gap[m]} for m in a.sizes},
        "target": "turns/s at batch 8 >= 2.5x batch 1",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1))
    b1 = a.sizes[0]
    print(f"| batch | turns/s (wall) | x batch {b1} | turns per CPU-s | x batch {b1} | answers = chat's (largest score gap) |")
    print("|---|---|---|---|---|---|")
    for m in modes:
        name, same = (str(m), f"{str(identical[m]).lower()} ({gap[m]:.1e})") if m else ("chat, one at a time", "(reference)")
        print(f"| {name} | {per[m]:.1f} | {per[m] / per[b1]:.2f} | {per_cpu[m]:.1f} | {per_cpu[m] / per_cpu[b1]:.2f} | {same} |")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
