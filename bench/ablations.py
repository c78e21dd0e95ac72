"""Issue 14's ablations at equal steps: object tokens on/off, grid tokens before/after the question,
oracle proposals, pointer on/off.

    python bench/ablations.py                      # train what is missing, evaluate, write bench/results/ablations.{json,png}
    python bench/ablations.py --steps 300 --scenes 100 --v2-scenes 100
    python bench/ablations.py --variants objects bidirectional relation_scores --steps 400 --seed 12000000 --scenes 100 --v2-scenes 100 --out bench/results/stop22

Training variants (each ``configs/tiny_shapesref_v2.yaml``: the same warm start, frozen stem, 5x5
grid tokens, learning-rate schedule -- the recipe's own, over its full length -- seed and data stream; each run
is stopped once its ``checkpoint-STEPS`` is written, so all are compared at equal steps):

- ``objects``: the recipe itself (object tokens after every question, the pointer picks). Its run
  folder is the recipe's (``--objects-run``, default runs/tiny-objects-v2): its ``checkpoint-STEPS``
  (copied to runs/keep/ while the recipe trains, see below) is this variant.
- ``grid_before``: object tokens off (preset ``tiny``, 5x5 grid), LLaVA's layout: the image
  tokens before the question. The LM must pick the object from the grid tokens.
- ``grid_after``: the same with ``image_position: after_question``: the grid tokens follow the
  first question and can attend to it.
- ``bidirectional``: the recipe with ``objects.bidirectional``: a turn's object tokens attend to
  one another both ways (the LM causal elsewhere).
- ``relation_scores``: the recipe with ``objects.region_relation`` and ``objects.relation_scores``:
  the region relation's features enter the object tokens and, weighed by the deciding state, the
  match scores and the pointer.
- ``position_scores``: the recipe with ``objects.position_scores``: each object's place among its
  image's (centre, rank along x and y), weighed by the deciding state, enters the match scores and
  the pointer ("the leftmost ...").
- ``relation_position_scores``: both of the last two.
- ``same_share``: the recipe with same-as-a-region requests 0.22 of the mix instead of 0.16
  (``data.weights``' last; the others as the recipe's): its recall is what keeps T-acc and
  same-as-region F1 short.

Evaluation-only variants of the ``objects`` checkpoint (no training):

- ``oracle``: the scenes' ground-truth masks given as the object tokens (``--proposals oracle``):
  the upper bound on selection with perfect proposals.
- ``pointer_off``: ``--selection mask``: each ``<loc>`` state draws its own mask through the mask
  head (the paper's path) while the object tokens stay in the prompt.

Each variant is evaluated with ``python -m perception evaluate`` on the same held-out scenes
(seeds from ``--seed``, 10,000,000 by default; ``--scenes`` v1 and ``--v2-scenes`` v2; a comparison
that decides a recipe uses validation seeds, 12,000,000, not the evaluation's). ``--variants``
runs some of them (default: the original five, without the later ones from ``bidirectional`` on). The PNG has the training curves
(language-model cross-entropy and, for ``objects``, the pointer loss, per step, from each run's
metrics.jsonl) and the headline metrics per variant. A run folder that already holds
``checkpoint-STEPS`` (or runs/keep/checkpoint-STEPS for the recipe) is reused, not retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/tiny_shapesref_v2.yaml"
GRID = {  # variant -> --set overrides of the recipe (object tokens off: preset tiny with the recipe's 5x5 grid)
    "grid_before": ["model=tiny", "model_overrides={backbone: {stem: {token_grid: 5}}, image_position: before_question}"],
    "grid_after": ["model=tiny", "model_overrides={backbone: {stem: {token_grid: 5}}, image_position: after_question}"],
    "bidirectional": ["model_overrides.objects.bidirectional=true"],
    "relation_scores": ["model_overrides.objects.region_relation=true", "model_overrides.objects.relation_scores=true"],
    "position_scores": ["model_overrides.objects.position_scores=true"],
    "relation_position_scores": ["model_overrides.objects.region_relation=true", "model_overrides.objects.relation_scores=true",
                                 "model_overrides.objects.position_scores=true"],
}
GRID["same_share"] = ["data.weights=[0.08, 0.176, 0.16, 0.096, 0.064, 0.036, 0.036, 0.036, 0.036, 0.05, 0.07, 0.05, 0.05, 0.07, 0.22]"]
VARIANTS = ["objects", "grid_before", "grid_after", "oracle", "pointer_off", "bidirectional", "relation_scores", "position_scores",
            "relation_position_scores", "same_share"]
DEFAULT_VARIANTS = VARIANTS[:5]
METRICS = [  # (label, path in the report)
    ("Acc@0.5", ("grounding", "overall", "acc@0.5")),
    ("A", ("grounding", "A", "acc@0.5")),
    ("S", ("grounding", "S", "acc@0.5")),
    ("R", ("grounding", "R", "acc@0.5")),
    ("mask mIoU", ("grounding", "overall", "mIoU")),
    ("all F1", ("multi_object", "f1")),
    ("counting", ("counting_accuracy", "accuracy")),
    ("region", ("region_accuracy", "accuracy")),
    ("N-acc", ("no_target", "n_acc")),
    ("T-acc", ("target", "t_acc")),
    ("follow-up", ("followup", "accuracy")),
    ("same F1", ("same_as_region", "f1")),
]


def checkpoint(folder: Path, steps: int) -> Path:
    return folder / f"checkpoint-{steps:06d}"


def train_until(name: str, overrides: list, out: Path, steps: int, threads: int) -> Path:
    """Train variant ``name`` into ``out`` until its checkpoint-STEPS exists (resumes; reuses)."""
    ck = checkpoint(out, steps)
    if (ck / "config.json").is_file():
        print(f"{name}: reusing {ck}")
        return ck
    cmd = [sys.executable, "-m", "perception", "train", "--config", CONFIG, "--no-progress", "--set",
           f"output_dir={out}", f"threads={threads}", "eval_every=0", "save_every=100", "keep_checkpoints=50",
           "data.num_workers=0", *overrides]
    print(f"{name}: {' '.join(cmd)}  (stopped at step {steps})", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        while not (ck / "config.json").is_file():
            if proc.poll() is not None:
                raise SystemExit(f"{name}: training ended (rc {proc.returncode}) before {ck} was written")
            time.sleep(10)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    return ck


def evaluate(name: str, model: Path, out: Path, args, extra: list) -> dict:
    report = out / f"{name}.json"
    if not report.is_file():
        cmd = [sys.executable, "-m", "perception", "evaluate", "--model", str(model), "--seed", str(args.seed),
               "--count", str(args.scenes), "--v2-count", str(args.v2_scenes), "--out", str(report), *extra]
        print(f"{name}: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def value(rep: dict, path: tuple):
    for p in path:
        rep = rep.get(p) if isinstance(rep, dict) else None
    return rep


def curves(run: Path, steps: int) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and r["step"] <= steps]
    return {k: [[r["step"], r[k]] for r in rows if k in r] for k in ("ce", "pointer")}


def plot(results: dict, steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, r in results.items():
        for key, style in (("ce", "-"), ("pointer", "--")):
            pts = r.get("curves", {}).get(key)
            if pts:
                xs, ys = zip(*pts)
                k = max(1, len(ys) // 60)  # moving average over ~1/60 of the run
                sm = [sum(ys[max(0, i - k):i + 1]) / len(ys[max(0, i - k):i + 1]) for i in range(len(ys))]
                a.plot(xs, sm, style, label=f"{name}: {key}")
    a.set_xlabel("step")
    a.set_ylabel("training loss (moving average)")
    a.set_yscale("log")
    a.legend(fontsize=8)
    a.set_title(f"training curves to step {steps}")
    labels = [m for m, _ in METRICS]
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        vals = [r["metrics"].get(m) or 0.0 for m in labels]
        b.bar([j + i * width for j in range(len(labels))], vals, width, label=name)
    b.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    b.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    b.set_ylim(0, 1)
    b.legend(fontsize=8)
    b.set_title(f"held-out scenes, step {steps}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--scenes", type=int, default=100, help="held-out v1 scenes per evaluation")
    ap.add_argument("--v2-scenes", type=int, default=100, help="held-out v2 scenes per evaluation")
    ap.add_argument("--objects-run", default="runs/tiny-objects-v2", help="the recipe's run folder")
    ap.add_argument("--runs", default="runs", help="where the ablation runs train (runs/abl-NAME)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    ap.add_argument("--out", default="bench/results", help="writes ablations.json / ablations.png here")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=DEFAULT_VARIANTS)
    ap.add_argument("--seed", type=int, default=10_000_000, help="first held-out scene seed of the evaluations")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = ROOT / args.out
    reports = out / f"ablations_step{args.steps}"
    reports.mkdir(parents=True, exist_ok=True)

    objects_run = ROOT / args.objects_run
    objects_ck = checkpoint(ROOT / args.runs / "keep", args.steps)
    if {"objects", "oracle", "pointer_off"} & set(args.variants) and not (objects_ck / "config.json").is_file():
        objects_ck = train_until("objects", [f"output_dir={objects_run}"], objects_run, args.steps, args.threads)
    variants = {"objects": (objects_ck, objects_run, [])}
    for name, overrides in GRID.items():
        if name in args.variants:
            run = ROOT / args.runs / f"abl-{name.replace('_', '-')}"
            variants[name] = (train_until(name, overrides, run, args.steps, args.threads), run, [])
    variants["oracle"] = (objects_ck, None, ["--proposals", "oracle"])
    variants["pointer_off"] = (objects_ck, None, ["--selection", "mask"])
    variants = {k: v for k, v in variants.items() if k in args.variants}

    results = {}
    for name, (ck, run, extra) in variants.items():
        rep = evaluate(name, ck, reports, args, extra)
        results[name] = {"checkpoint": str(ck.relative_to(ROOT)), "evaluate_args": extra,
                         "metrics": {m: value(rep, p) for m, p in METRICS},
                         "proposals": rep.get("proposals"),
                         "curves": curves(run, args.steps) if run is not None else {}}
    summary = {"steps": args.steps, "scenes": args.scenes, "v2_scenes": args.v2_scenes, "seed": args.seed, "config": CONFIG,
               "variants": results}
    (out / "ablations.json").write_text(json.dumps(summary, indent=1))
    plot(results, args.steps, out / "ablations.png")
    print("| variant | " + " | ".join(m for m, _ in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join("—" if r["metrics"][m] is None else f"{r['metrics'][m]:.3f}" for m, _ in METRICS) + " |")
    print(f"written: {out / 'ablations.json'}, {out / 'ablations.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
