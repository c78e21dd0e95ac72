"""Benchmark of the paper's claim: perception-token embeddings vs coordinates written as text.

    python bench/claims.py                     # full: 3 seeds x 2 modes (about 90 min on 2 cores)
    python bench/claims.py --quick [--out DIR] # smoke run (a few minutes), used by tests/test_bench_claims.py

Both modes are the *same* tiny backbone (same ``model_overrides`` for size, same tokenizer, data,
steps, optimiser, learning-rate schedule and seeds); they differ only in ``output_mode``:
``perception`` writes ``<p>the red circle</p><loc>`` and decodes the ``<loc>`` state with the heads;
``text_box`` (perception/baseline.py) writes ``<p>the red circle</p>[0.12,0.34,0.56,0.78]`` and
parses the numbers back (no masks). Training data: ShapesRef grounding tasks (A, S, R and "all the
..."), no click auxiliary in either mode.

Measured, each training run and each inference measurement in a fresh process (so peak RSS is per run):
- Acc@0.5 (first answered box vs the target, box IoU >= 0.5) on ``eval_scenes`` held-out one-object
  grounding scenes (seeds EVAL_SEED.., types A/S/R in turn), every ``eval_every`` steps, per seed;
  curve PNG with the min-max band over seeds. Mask mIoU on the same answers: perception mode only
  (text_box mode writes no masks).
- trainable parameters: ``declared`` (requires_grad) and ``receiving_gradients`` (non-zero gradient
  after one backward pass on a training batch: in text_box mode the heads receive none).
- tokens per object (defined in DEFINITIONS below), from greedy answers to "all the ..." questions.
- latency per answer with 1, 3 and 5 matching objects: median wall time of ``Pipeline.chat``
  (batch 1, image features already cached, greedy), plus ``forced``: the reference answer emitted by
  the real generation loop (``generate(..., forced=ids)``: KV cache, ``<loc>`` feedback) and decoded
  into objects, timed by ``bench.forced.time_answer`` (independent of training quality).
- peak memory: ru_maxrss of the training process and of the inference process; parameter bytes.

Budget math (full profile, target ~90 min on 2 cores). Measured with a 10-step probe of each mode
at FULL_OVERRIDES (Llama h128 x 3 layers, stem [16, 32, 64, 96], mask dim 32), batch 8, 1 thread,
nice 19, on the 2-core dev machine while another training run used both cores: 0.45 s/step
(perception), 0.37 s/step (text_box; no mask losses). Conservatively 0.45 s/step:
  training    6 runs (3 seeds x 2 modes) x 1500 steps x 0.45 s            ~ 4050 s
  evaluation  6 checkpoints x 60 scenes per run; estimated ~0.25 s/answer
              perception, ~0.5 s text_box (longer answers): 3x90 + 3x180 s ~  810 s
  inference   2 modes x (3 counts x 5 scenes x (1 cold + 3 chat + 3 forced)
              + parameter probe)                                          ~  200 s
  start-up    8 fresh processes x ~8 s                                     ~   60 s
  total                                                                   ~ 5100 s (85 min)
An idle machine with 2 threads per process is faster. The script prints the projected total after
each run; ``--steps`` / ``--seeds`` (>= 3) rescale it. Quick profile: 2 seeds x 2 modes x 6 steps,
h64 x 2 layers, batch 4, 2 evaluations x 8 scenes, one scene per object count: ~1.5 min.

Writes OUT/claims.json and OUT/claims_acc.png and prints a markdown table. OUT defaults to
bench/results for the full profile and to QUICK_OUT (a temporary folder) for ``--quick``: a smoke
run never replaces the committed results. The claims and their targets are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.forced import COUNT_SEED, count_scenes, location_tokens, profile_arguments, reference_answer, time_answer, \
    write_report  # noqa: E402

RESULTS = ROOT / "bench" / "results"  # the committed full-run results
QUICK_OUT = Path(tempfile.gettempdir()) / "perception-bench" / "claims-quick"  # --quick without --out
MODES = ("perception", "text_box")
TASKS = ["ground_A", "ground_S", "ground_R", "ground_all"]
WEIGHTS = [0.3, 0.2, 0.2, 0.3]
GROUND_TYPES = ("ground_A", "ground_S", "ground_R")
EVAL_SEED = 20_000_000  # held-out one-object grounding scenes (training scene seeds stay far below)
OBJECT_COUNTS = (1, 3, 5)
EVAL_MAX_NEW = 64  # generation cap for one-object answers (a text box answer is ~27 tokens)
LATENCY_MAX_NEW = 192  # generation cap for "all the ..." answers (5 text boxes are ~145 tokens)

# The benchmark compares output representations on the paper's path, identical in both modes: no
# attribute auxiliaries and no <loc> feedback (the tiny recipe's additions, which only perception
# mode could use). The committed full run (bench/results/claims.json) ran at commit 16e2b76, whose
# region encoder read the whole frame; today's reads an ROI crop.
PAPER_PATH = {"token_aux": {"attributes": []}, "loc_feedback": False}
QUICK_OVERRIDES = {
    "backbone": {"text": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
                 "stem": {"channels": [8, 16, 32, 48], "token_grid": 10}},
    "mask_head": {"dim": 32},
    **PAPER_PATH,
}
FULL_OVERRIDES = {
    "backbone": {"text": {"hidden_size": 128, "num_layers": 3, "num_heads": 4, "intermediate_size": 384},
                 "stem": {"channels": [16, 32, 64, 96], "token_grid": 10}},
    "mask_head": {"dim": 32},
    **PAPER_PATH,
}
PROFILES = {
    "quick": dict(seeds=2, steps=6, eval_every=3, eval_scenes=8, batch_size=4, lr=2e-3, warmup=2,
                  latency_scenes=1, latency_repeats=1, threads=1, overrides=QUICK_OVERRIDES),
    "full": dict(seeds=3, steps=1500, eval_every=250, eval_scenes=60, batch_size=8, lr=1e-3, warmup=100,
                 latency_scenes=5, latency_repeats=3, threads=2, overrides=FULL_OVERRIDES),
}

DEFINITIONS = {
    "acc@0.5": "fraction of held-out one-object grounding questions whose first answered box has IoU >= 0.5 "
               "with the target box (no answered box counts as a miss)",
    "mask_mIoU": "mean mask IoU of the first answered object's mask vs the target mask on the same questions; "
                 "perception mode only: text_box mode writes no masks",
    "tokens_per_object": "per answer: generated tokens (the final </s> excluded) minus the tokens of the phrase "
                         "markup (every token from <p> through </p>, both included); summed over answers and "
                         "divided by the summed number of objects the answers yielded. What remains is the "
                         "location tokens (<loc>, or the '[x1,y1,x2,y2]' text) plus separators such as ', '. "
                         "'generated': greedy answers to the 1/3/5-object 'all the ...' questions; 'reference': "
                         "the same count on the reference answers (independent of training quality)",
    "latency_ms": "median wall time of Pipeline.chat per answer, CPU, batch 1, greedy, image features cached "
                  "(so it is generation + decoding the objects), by number of matching objects in the scene",
    "latency_forced_ms": "median wall time to emit the reference answer through the real generation loop "
                         "(generate(..., forced=ids): prefill, one KV-cache forward per token, greedy scoring, <loc> "
                         "feedback when the model has it) and decode it into objects",
    "trainable_params": "declared: parameters with requires_grad; receiving_gradients: parameters with a non-zero "
                        "gradient after one backward pass on a training batch of this benchmark's data",
    "peak_rss_mb": "ru_maxrss of the process: train = one training run incl. its periodic evaluations (max over "
                   "seeds); inference = loading the checkpoint and the latency / token measurements",
}
TARGETS = {
    "tokens_per_object_ratio": "perception / text_box tokens per object <= 1/5",
    "speedup_at_3_objects": "text_box / perception median latency at 3 objects >= 3",
    "acc_higher_every_checkpoint": "perception mean Acc@0.5 > text_box mean Acc@0.5 at every equal-step checkpoint",
}


# --- data -------------------------------------------------------------------------------------


def grounding_items(seed: int, count: int) -> list:
    """Held-out one-object grounding questions: [(image, question, target box px, target mask)]."""
    from perception.data.shapesref import draw_scene, make_turn

    items = []
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        scene = draw_scene(rng)
        turn, task = None, GROUND_TYPES[i % 3]
        for _ in range(6):  # S / R are impossible in some scenes: fall back along the list
            turn = make_turn(scene, rng, task)
            if turn is not None:
                break
            task = GROUND_TYPES[(GROUND_TYPES.index(task) + 1) % 3]
        if turn is None:
            continue
        o = scene.objects[turn.targets[0]]
        items.append((scene.image, turn.user, o.box, o.mask))
    return items


def train_config(mode: str, seed: int, profile: dict, run_dir: str):
    from perception.config import TrainConfig

    p = profile
    return TrainConfig.from_dict({
        "model": "tiny", "output_dir": run_dir, "seed": seed, "steps": p["steps"], "batch_size": p["batch_size"],
        "lr": p["lr"], "warmup": p["warmup"], "save_every": p["steps"], "keep_checkpoints": 1,
        "eval_every": p["eval_every"], "eval_scenes": p["eval_scenes"], "eval_seed": EVAL_SEED,
        "threads": p["threads"],
        "model_overrides": {**p["overrides"], "output_mode": mode},  # same size overrides for both modes
        "data": {"source": "shapesref", "tasks": TASKS, "weights": WEIGHTS, "multi_turn": 0.0,
                 "clicks_per_image": 0, "num_workers": 0},
    })


# --- measurements -----------------------------------------------------------------------------

_ITEMS: dict = {}
_EVAL_SECONDS = [0.0]


def grounding_eval(model, tc) -> dict:
    """The trainer's eval_fn: Acc@0.5 (and mask mIoU in perception mode) on held-out grounding scenes."""
    from perception.geometry import box_iou, mask_iou
    from perception.limits import Limits
    from perception.pipeline import Pipeline

    t0 = time.perf_counter()
    key = (tc.eval_seed, tc.eval_scenes)
    if key not in _ITEMS:
        _ITEMS[key] = grounding_items(*key)
    pipe = Pipeline(model, model.device, Limits(max_new_tokens=EVAL_MAX_NEW))
    ious, mious, answered = [], [], 0
    for image, question, box, mask in _ITEMS[key]:
        objs = pipe.chat(image, question).objects
        answered += bool(objs)
        ious.append(box_iou(objs[0].box, box) if objs else 0.0)
        if model.config.output_mode == "perception":
            mious.append(mask_iou(objs[0].mask, mask) if objs and objs[0].mask is not None else 0.0)
    res = {"acc@0.5": float(np.mean(np.asarray(ious) >= 0.5)) if ious else 0.0,
           "answered": answered / max(1, len(ious)), "n": float(len(ious))}
    if mious:
        res["mask_mIoU"] = float(np.mean(mious))
    _EVAL_SECONDS[0] += time.perf_counter() - t0
    return res


def _generated_ids(pipe, image, question: str) -> list:
    """The ids ``Pipeline.chat`` generates for a fresh one-turn question (greedy, deterministic)."""
    import torch

    from perception.generation import generate

    model = pipe.model
    _, (_, state) = pipe._prepare(image)
    enc = model.prompts.encode([(question, None)], add_generation_prompt=True)
    return list(generate(model, state, torch.tensor([enc.input_ids]), None, pipe.limits.max_new_tokens, pipe.limits.max_objects))


def gradient_parameters(model, batch) -> dict:
    """One forward/backward on ``batch``: parameter counts declared trainable and receiving a gradient."""
    model.train()
    model.zero_grad(set_to_none=True)
    model(batch)["loss"].backward()
    declared, receiving, by_part = 0, 0, {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        declared += p.numel()
        if p.grad is not None and bool(p.grad.abs().sum() > 0):
            receiving += p.numel()
            part = name.split(".")[0]
            by_part[part] = by_part.get(part, 0) + p.numel()
    model.zero_grad(set_to_none=True)
    return {"declared": declared, "receiving_gradients": receiving, "receiving_by_part": by_part}


def _peak_rss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


# --- jobs (each in a fresh process) -----------------------------------------------------------


def train_job(mode: str, seed: int, profile: dict, run_dir: str) -> dict:
    """One training run with periodic evaluation; returns its curve, timings and peak RSS."""
    import torch

    from perception.train import latest_checkpoint, train

    torch.set_num_threads(profile["threads"])
    tc = train_config(mode, seed, profile, run_dir)
    t0 = time.perf_counter()
    out = train(tc, eval_fn=grounding_eval, progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    curve = [{"step": r["step"], **r["eval"]} for r in rows if "eval" in r]
    ce = [r["ce"] for r in rows if "ce" in r]
    return {"mode": mode, "seed": seed, "curve": curve, "checkpoint": str(latest_checkpoint(out)),
            "train_seconds": wall - _EVAL_SECONDS[0], "eval_seconds": _EVAL_SECONDS[0],
            "final_ce": float(np.mean(ce[-max(1, len(ce) // 10):])) if ce else None, "peak_rss_mb": _peak_rss_mb()}


def inference_job(mode: str, checkpoint: str, profile: dict) -> dict:
    """Latency, tokens per object, peak RSS of inference and parameter counts for one trained model."""
    import torch

    from perception.checkpoint import from_pretrained
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample
    from perception.limits import Limits
    from perception.pipeline import Pipeline
    from perception.train import build_model

    torch.set_num_threads(profile["threads"])
    model = from_pretrained(checkpoint)
    pipe = Pipeline(model, torch.device("cpu"), Limits(max_new_tokens=LATENCY_MAX_NEW))
    prompts = model.prompts
    scenes = {n: count_scenes(n, profile["latency_scenes"]) for n in OBJECT_COUNTS}
    warm = scenes[1][0]
    pipe.chat(warm.image, warm.turns[0].user)  # warm-up (allocations, first-call costs)
    lat, forced, cold, objects = {}, {}, {}, {}
    gen_tok = {"tokens": 0, "phrase": 0, "objects": 0}
    ref_tok = {"tokens": 0, "phrase": 0, "objects": 0}
    by_n = {}
    for n, samples in scenes.items():
        lat[n], forced[n], cold[n], objects[n] = [], [], [], []
        tok_n = {"tokens": 0, "phrase": 0, "objects": 0}
        for s in samples:
            image, question = s.image.copy(), s.turns[0].user
            t0 = time.perf_counter()
            ans = pipe.chat(image, question)  # image features computed here: the cold call
            cold[n].append(time.perf_counter() - t0)
            for _ in range(profile["latency_repeats"]):
                t0 = time.perf_counter()
                ans = pipe.chat(image, question)
                lat[n].append(time.perf_counter() - t0)
            objects[n].append(len(ans.objects))
            ids = _generated_ids(pipe, image, question)
            total, phrase = location_tokens(ids, prompts)
            for d in (gen_tok, tok_n):
                d["tokens"] += total
                d["phrase"] += phrase
                d["objects"] += len(ans.objects)
            ref = reference_answer(s, model.config)
            total, phrase = location_tokens(prompts.assistant(ref), prompts)
            ref_tok["tokens"] += total
            ref_tok["phrase"] += phrase
            ref_tok["objects"] += n
            for _ in range(profile["latency_repeats"]):
                forced[n].append(time_answer(pipe, image, question, ref).seconds)
        by_n[n] = _per_object(tok_n)
    rss = _peak_rss_mb()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del pipe, model

    # parameters that receive gradients: a fresh model of the same config, one batch of this benchmark's data
    tc = train_config(mode, 0, profile, tempfile.gettempdir())
    fresh = build_model(tc)
    collate = Collator(fresh.config, fresh.tokenizer, fresh.backbone.num_image_tokens,
                       clicks_per_image=tc.data.clicks_per_image, click_teacher=tc.data.click_teacher)
    batch = collate([make_sample(COUNT_SEED + 50_000 + i, tasks=TASKS) for i in range(len(TASKS) * 2)])
    params = gradient_parameters(fresh, batch)

    med = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    return {
        "mode": mode,
        "latency_ms": {str(n): {"median": med(v), "n": len(v)} for n, v in lat.items()},
        "latency_cold_ms": {str(n): {"median": med(v), "n": len(v)} for n, v in cold.items()},
        "latency_forced_ms": {str(n): {"median": med(v), "n": len(v)} for n, v in forced.items()},
        "objects_answered": {str(n): float(np.mean(v)) for n, v in objects.items()},
        "tokens_per_object": {"generated": _per_object(gen_tok), "reference": _per_object(ref_tok),
                              "generated_by_objects": {str(n): v for n, v in by_n.items()}},
        "peak_rss_mb_inference": rss,
        "param_bytes": param_bytes,
        "trainable_params": params,
    }


def _per_object(d: dict):
    return (d["tokens"] - d["phrase"]) / d["objects"] if d["objects"] else None


# --- report -----------------------------------------------------------------------------------


def _curve(runs: list) -> dict:
    steps = sorted({c["step"] for r in runs for c in r["curve"]})
    per_seed = {str(r["seed"]): [next((c["acc@0.5"] for c in r["curve"] if c["step"] == s), float("nan")) for s in steps]
                for r in runs}
    a = np.array(list(per_seed.values()), float).reshape(len(per_seed), len(steps))
    stat = lambda f: [float(v) for v in f(a, 0)] if a.size else []  # noqa: E731
    out = {"steps": steps, "per_seed": per_seed, "mean": stat(np.nanmean), "min": stat(np.nanmin),
           "max": stat(np.nanmax), "std": stat(np.nanstd)}
    miou = [[c.get("mask_mIoU") for c in r["curve"]] for r in runs]
    if all(m and None not in m for m in miou):
        out["mask_mIoU_mean"] = [float(v) for v in np.mean(np.array(miou, float), 0)]
    return out


def _summary(xs):
    xs = [x for x in xs if x is not None]
    return {"mean": float(np.mean(xs)), "min": float(np.min(xs)), "max": float(np.max(xs))} if xs else None


def build_report(profile_name: str, profile: dict, train_runs: list, infer: dict, wall: float) -> dict:
    import torch

    modes = {}
    for mode in MODES:
        runs = [r for r in train_runs if r["mode"] == mode]
        curve = _curve(runs)
        final_miou = [r["curve"][-1].get("mask_mIoU") for r in runs if r["curve"]]
        inf = infer[mode]
        modes[mode] = {
            "acc_curve": curve,
            "final_acc@0.5": _summary([r["curve"][-1]["acc@0.5"] for r in runs if r["curve"]]),
            "mask_mIoU": _summary(final_miou) if mode == "perception" else None,
            "mask_mIoU_note": "perception mode decodes a mask per <loc>" if mode == "perception"
            else "not applicable: text_box mode writes no masks",
            "trainable_params": inf["trainable_params"],
            "tokens_per_object": inf["tokens_per_object"],
            "latency_ms": inf["latency_ms"],
            "latency_cold_ms": inf["latency_cold_ms"],
            "latency_forced_ms": inf["latency_forced_ms"],
            "objects_answered": inf["objects_answered"],
            "peak_rss_mb": {"train": max(r["peak_rss_mb"] for r in runs), "inference": inf["peak_rss_mb_inference"]},
            "param_bytes": inf["param_bytes"],
            "train_seconds": [round(r["train_seconds"], 1) for r in runs],
            "eval_seconds": [round(r["eval_seconds"], 1) for r in runs],
            "final_ce": _summary([r["final_ce"] for r in runs]),
        }
    p, t = modes["perception"], modes["text_box"]
    tp, tt = p["tokens_per_object"]["generated"], t["tokens_per_object"]["generated"]
    ratio = tp / tt if tp is not None and tt else None
    speed = t["latency_ms"]["3"]["median"] / p["latency_ms"]["3"]["median"]
    pm, tm = p["acc_curve"]["mean"], t["acc_curve"]["mean"]
    higher = bool(pm) and len(pm) == len(tm) and all(a > b for a, b in zip(pm, tm))
    separated = bool(pm) and all(a > b for a, b in zip(p["acc_curve"]["min"], t["acc_curve"]["max"]))
    claims = {
        "tokens_per_object_ratio": {"value": ratio, "reference_value": p["tokens_per_object"]["reference"] / t["tokens_per_object"]["reference"],
                                    "target": 0.2, "met": ratio is not None and ratio <= 0.2},
        "speedup_at_3_objects": {"value": speed, "forced_value": t["latency_forced_ms"]["3"]["median"] / p["latency_forced_ms"]["3"]["median"],
                                 "target": 3.0, "met": speed >= 3.0},
        "acc_higher_every_checkpoint": {"met": higher, "bands_separated": separated},
    }
    cfg = {k: v for k, v in profile.items() if k != "overrides"}
    return {
        "benchmark": "claims",
        "profile": profile_name,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "threads": profile["threads"]},
        "config": {**cfg, "model": "tiny", "model_overrides": profile["overrides"], "tasks": TASKS, "weights": WEIGHTS,
                   "eval_seed": EVAL_SEED, "count_seed": COUNT_SEED, "seeds_used": sorted({r["seed"] for r in train_runs})},
        "modes": modes,
        "claims": claims,
        "targets": TARGETS,
        "definitions": DEFINITIONS,
        "wall_seconds": round(wall, 1),
    }


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for mode, color in zip(MODES, ("tab:blue", "tab:orange")):
        c = report["modes"][mode]["acc_curve"]
        if not c["steps"]:
            continue
        n = len(c["per_seed"])
        ax.plot(c["steps"], c["mean"], "o-", color=color, label=f"{mode} (mean of {n} seeds)")
        ax.fill_between(c["steps"], c["min"], c["max"], color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("training steps")
    ax.set_ylabel("Acc@0.5 (held-out one-object grounding)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"perception token vs text boxes, same backbone (band: min-max over seeds; {report['profile']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(v, f="{:.3f}"):
    return "n/a" if v is None else f.format(v)


def format_table(rep: dict) -> str:
    p, t = rep["modes"]["perception"], rep["modes"]["text_box"]
    rows = [("final Acc@0.5, mean [min, max] over seeds",
             *(f"{m['final_acc@0.5']['mean']:.3f} [{m['final_acc@0.5']['min']:.3f}, {m['final_acc@0.5']['max']:.3f}]"
               if m["final_acc@0.5"] else "n/a" for m in (p, t))),
            ("Acc@0.5 mean at steps " + ", ".join(map(str, p["acc_curve"]["steps"])),
             *(" / ".join(f"{v:.2f}" for v in m["acc_curve"]["mean"]) for m in (p, t))),
            ("mask mIoU (final)", _fmt(p["mask_mIoU"]["mean"] if p["mask_mIoU"] else None), "n/a (no masks)"),
            ("trainable params receiving gradients", *(f"{m['trainable_params']['receiving_gradients']:,}" for m in (p, t))),
            ("trainable params declared", *(f"{m['trainable_params']['declared']:,}" for m in (p, t))),
            ("tokens per object: generated / reference", *(f"{_fmt(m['tokens_per_object']['generated'], '{:.2f}')} / "
                                                           f"{_fmt(m['tokens_per_object']['reference'], '{:.2f}')}" for m in (p, t)))]
    for n in OBJECT_COUNTS:
        rows.append((f"latency, {n} object(s): chat / forced (ms, median)",
                     *(f"{m['latency_ms'][str(n)]['median']:.1f} / {m['latency_forced_ms'][str(n)]['median']:.1f}" for m in (p, t))))
    rows.append(("objects answered at 1 / 3 / 5", *(" / ".join(f"{m['objects_answered'][str(n)]:.1f}" for n in OBJECT_COUNTS) for m in (p, t))))
    rows.append(("peak RSS train / inference (MB)", *(f"{m['peak_rss_mb']['train']:.0f} / {m['peak_rss_mb']['inference']:.0f}" for m in (p, t))))
    rows.append(("train seconds per run (excl. eval)", *(", ".join(f"{s:.0f}" for s in m["train_seconds"]) for m in (p, t))))
    lines = ["| metric | perception (`<loc>`) | text_box (`[x1,y1,x2,y2]`) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    c = rep["claims"]
    lines += ["", "| claim | target | measured | met |", "|---|---|---|---|",
              f"| tokens per object, perception / text_box | <= 0.2 | {_fmt(c['tokens_per_object_ratio']['value'])} "
              f"(reference answers: {c['tokens_per_object_ratio']['reference_value']:.3f}) | {c['tokens_per_object_ratio']['met']} |",
              f"| speed-up at 3 objects, text_box / perception | >= 3x | {c['speedup_at_3_objects']['value']:.2f}x "
              f"(forced: {c['speedup_at_3_objects']['forced_value']:.2f}x) | {c['speedup_at_3_objects']['met']} |",
              f"| higher mean Acc@0.5 at every equal-step checkpoint | all | bands separated: "
              f"{c['acc_higher_every_checkpoint']['bands_separated']} | {c['acc_higher_every_checkpoint']['met']} |"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap, out_of = profile_arguments(__doc__, "smoke profile (minutes): 2 seeds x 6 steps, tiny model",
                                   "claims.json and claims_acc.png", RESULTS, QUICK_OUT)
    ap.add_argument("--seeds", type=int, default=None, help="override the profile's number of seeds")
    ap.add_argument("--steps", type=int, default=None, help="override the profile's training steps")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (profile default)")
    ap.add_argument("--keep-runs", default=None, help="keep run folders (checkpoints, metrics.jsonl) here")
    a = ap.parse_args(argv)

    name = "quick" if a.quick else "full"
    profile = dict(PROFILES[name])
    for k in ("seeds", "steps", "threads"):
        if getattr(a, k) is not None:
            profile[k] = getattr(a, k)
    if name == "full" and profile["seeds"] < 3:
        raise SystemExit("the full benchmark needs at least 3 seeds")
    out = out_of(a)
    t_start = time.perf_counter()
    tmp = None
    if a.keep_runs:
        runs_root = Path(a.keep_runs)
        runs_root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="claims-")
        runs_root = Path(tmp.name)
    ctx = get_context("spawn")
    train_runs, infer = [], {}
    try:
        for mode in MODES:
            for seed in range(profile["seeds"]):
                run_dir = runs_root / f"{mode}-seed{seed}"
                if (run_dir / "latest").exists():
                    raise SystemExit(f"{run_dir} already holds a run; pass an empty --keep-runs folder")
                t0 = time.perf_counter()
                with ProcessPoolExecutor(1, mp_context=ctx) as ex:  # a fresh process per run: clean peak RSS
                    r = ex.submit(train_job, mode, seed, profile, str(run_dir)).result()
                train_runs.append(r)
                done, left = len(train_runs), len(MODES) * profile["seeds"] - len(train_runs)
                elapsed = time.perf_counter() - t_start
                print(f"[claims] trained {mode} seed {seed}: final Acc@0.5 "
                      f"{r['curve'][-1]['acc@0.5'] if r['curve'] else float('nan'):.3f} "
                      f"({time.perf_counter() - t0:.0f} s; projected total ~{(elapsed + left * elapsed / done) / 60:.0f} min "
                      f"plus inference)", flush=True)
            t0 = time.perf_counter()
            ckpt = next(r["checkpoint"] for r in train_runs if r["mode"] == mode)
            with ProcessPoolExecutor(1, mp_context=ctx) as ex:
                infer[mode] = ex.submit(inference_job, mode, ckpt, profile).result()
            print(f"[claims] measured {mode} inference ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    rep = build_report(name, profile, train_runs, infer, time.perf_counter() - t_start)
    write_report(rep, out / "claims.json", out / "claims_acc.png", plot, format_table(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
