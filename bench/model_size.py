"""Answer latency against language-model size: perception tokens vs boxes written as text.

    python bench/model_size.py              # full sweep (~25 min on 2 cores), writes bench/results/model_size.{json,png}
    python bench/model_size.py --quick      # smoke run (seconds), writes to QUICK_OUT (a temporary folder)

The tiny preset's model (perception/presets.py) with only ``backbone.text`` scaled (hidden_size,
num_layers, num_heads, intermediate_size; SIZES below), random init (seed 0), fp32 on CPU, built
once per output mode: ``perception`` (``<p>the red circle</p><loc>``, masks decoded from the
``<loc>`` states, ``<loc>`` feedback) and ``text_box`` (``<p>the red circle</p>[0.12,0.34,0.56,0.78]``,
perception/baseline.py). Untrained weights answer nonsense, so each reference answer -- a ShapesRef
scene with exactly 1, 3 or 5 objects matching "Find all the ..." -- is *forced* through the real
generation loop and its objects decoded: ``bench.forced.time_answer``, the one helper that knows
how an answer is produced. Image features are cached before the clock starts.

Per repetition, for each object count, the two modes run back to back, alternating which goes
first, so load from other processes on a shared machine falls on both alike. One untimed 1-object
answer per mode warms up first. The KV cache after each answer is recorded by wrapping the LM's
forward (one extra Python call per forward, in both modes).

Latency is measured twice per answer: wall time, and the CPU time of this process
(``time.process_time``). With one torch thread the two agree on an idle machine; on a shared one
the wall time also counts the time other processes held the core, the CPU time does not. Medians,
ratios, fits and the plot use the CPU time; the JSON keeps both (``wall_median_ms``, ``wall_ratio``).

Reported per size and mode: median latency per answer at 1/3/5 objects; latency per object (the
least-squares slope over 1/3/5); tokens per object (the claims definition: answer tokens outside
the ``<p>...</p>`` markup, per object; and all answer tokens per object, the slope); KV-cache bytes
after the answer (summed tensor sizes). Per size, the fit ``latency = a + b * steps + c * masks``
(steps: tokens the loop emits; masks: objects decoded from ``<loc>`` states, 0 in text_box mode).
Across sizes, ``a`` and ``b`` are fitted linearly in LM parameters and ``c`` taken as the median:
the extrapolated ratio (e.g. at 7B), and where the ratio crosses 2x and 3x when the measured range
does not reach it. The PNG plots text_box / perception latency against LM parameters, one line per
object count, with the extrapolation dotted.

Budget (full): 3 sizes x 3 timed passes x 2 modes x 3 counts, 1 torch thread. Probed on the 2-core
dev machine when idle: one decoding step costs ~5 ms (tiny), ~42 ms (100M), ~0.37 s (0.5B); a pass
emits ~340 tokens (text_box 1/3/5 objects ~260, perception ~80) plus 6 prefills, so ~150 s per pass
at 0.5B and ~17 s at 100M: ~9 min idle. The committed run took 473 s of wall time with other
engineers' jobs on the same 2 cores (1-minute load average 4.6-5.9, recorded per size in the JSON);
an earlier attempt under load ~10 ran ~3.5x slower than the probe, so a fourth (250M) size was dropped.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.forced import (  # noqa: E402
    answer_ids,
    cache_bytes,
    count_scenes,
    last_cache,
    profile_arguments,
    location_tokens,
    reference_answer,
    time_answer,
    write_report,
)

RESULTS = ROOT / "bench" / "results"
QUICK_OUT = Path(tempfile.gettempdir()) / "perception-bench" / "model-size-quick"
MODES = ("perception", "text_box")
OBJECT_COUNTS = (1, 3, 5)
TARGETS = (2.0, 3.0)  # text_box / perception latency ratios whose crossing size is reported
EXTRAPOLATE_TO = 7e9  # LM parameters of the extrapolated point (a 7B LM)

# backbone.text of each size; "tiny" is the preset's own LM
SIZES = {
    "tiny": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 768},
    "100M": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2560},
    "500M": {"hidden_size": 1536, "num_layers": 18, "num_heads": 12, "intermediate_size": 4096},
}
QUICK_SIZES = {
    "h64": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
    "tiny": SIZES["tiny"],
}
PROFILES = {"full": {"sizes": SIZES, "reps": 3}, "quick": {"sizes": QUICK_SIZES, "reps": 1}}


# --- models -----------------------------------------------------------------------------------


def build_pipeline(text: dict, mode: str, tokenizer, seed: int = 0):
    """The tiny preset with ``backbone.text`` updated from ``text`` and ``output_mode`` = mode, random
    init from ``seed``, fp32, CPU, in a Pipeline whose limits allow the longest reference answer."""
    import torch

    from perception.config import PerceptionConfig
    from perception.limits import Limits
    from perception.model import PerceptionModel
    from perception.pipeline import Pipeline
    from perception.presets import get_preset

    cfg = get_preset("tiny").to_dict()
    cfg["backbone"]["text"].update(text)
    cfg["output_mode"] = mode
    torch.manual_seed(seed)
    model = PerceptionModel(PerceptionConfig.from_dict(cfg), tokenizer).eval()
    return Pipeline(model, torch.device("cpu"), Limits(max_new_tokens=1024))


def lm_parameters(model) -> int:
    """Parameters of the language model (embeddings and LM head included), not the stem or heads."""
    prefix = model.backbone.lm_prefix
    return sum(p.numel() for p in getattr(model.backbone, prefix).parameters())


# --- measuring one size -----------------------------------------------------------------------


def measure_size(text: dict, scenes: dict, reps: int, tokenizer) -> dict:
    """Both modes of one LM size. scenes: {n: Sample}. Returns the per-mode, per-count measurements."""
    pipes = {mode: build_pipeline(text, mode, tokenizer) for mode in MODES}
    prompts = pipes["perception"].model.prompts
    answers = {(mode, n): reference_answer(s, pipes[mode].model.config) for mode in MODES for n, s in scenes.items()}
    prompts_len = {n: len(prompts.encode([(s.turns[0].user, None)], add_generation_prompt=True).input_ids)
                   for n, s in scenes.items()}
    rows = {mode: {} for mode in MODES}
    for (mode, n), answer in answers.items():
        total, phrase = location_tokens(answer_ids(prompts, answer), prompts)
        rows[mode][n] = {"answer": answer, "prompt_tokens": prompts_len[n], "steps": total + 1, "answer_tokens": total,
                         "phrase_tokens": phrase, "kv_cache_bytes": None, "seconds": [], "cpu_seconds": []}
    first = scenes[OBJECT_COUNTS[0]]
    for mode in MODES:  # untimed warm-up (first-call allocations)
        time_answer(pipes[mode], first.image, first.turns[0].user, answers[(mode, OBJECT_COUNTS[0])])
    load = [os.getloadavg()[0]]
    for r in range(reps):
        for n, s in scenes.items():
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):  # interleaved, alternating who goes first
                row = rows[mode][n]
                with last_cache(pipes[mode].model) as box:  # one Python call per LM forward, both modes alike
                    done = time_answer(pipes[mode], s.image, s.turns[0].user, answers[(mode, n)])
                if done.decoded != n or done.steps != row["steps"]:
                    raise RuntimeError(f"{mode}: the forced {n}-object answer ({row['steps']} tokens) decoded "
                                       f"{done.decoded} objects in {done.steps} steps")
                row["seconds"].append(done.seconds)
                row["cpu_seconds"].append(done.cpu_seconds)
                row["kv_cache_bytes"] = cache_bytes(box["past"])
        load.append(os.getloadavg()[0])
    model = pipes["perception"].model
    out = {"text": text, "lm_parameters": lm_parameters(model),
           "model_parameters": sum(p.numel() for p in model.parameters()), "load_avg_1min": load, "modes": {}}
    for mode in MODES:
        per_n = {}
        for n, row in rows[mode].items():
            per_n[str(n)] = {**row, "median_ms": 1000 * statistics.median(row["cpu_seconds"]),
                             "wall_median_ms": 1000 * statistics.median(row["seconds"]),
                             "seconds": [round(x, 5) for x in row["seconds"]],
                             "cpu_seconds": [round(x, 5) for x in row["cpu_seconds"]]}
        ns = np.array(OBJECT_COUNTS, float)
        med = np.array([per_n[str(n)]["median_ms"] for n in OBJECT_COUNTS])
        steps = np.array([per_n[str(n)]["answer_tokens"] for n in OBJECT_COUNTS], float)
        loc = sum(per_n[str(n)]["answer_tokens"] - per_n[str(n)]["phrase_tokens"] for n in OBJECT_COUNTS)
        out["modes"][mode] = {
            "by_objects": per_n,
            "ms_per_object": float(np.polyfit(ns, med, 1)[0]),
            "location_tokens_per_object": loc / float(ns.sum()),
            "answer_tokens_per_object": float(np.polyfit(ns, steps, 1)[0]),
        }
    t, p = out["modes"]["text_box"]["by_objects"], out["modes"]["perception"]["by_objects"]
    for name, key in (("ratio", "median_ms"), ("wall_ratio", "wall_median_ms")):  # text_box / perception
        out[name] = {str(n): t[str(n)][key] / p[str(n)][key] for n in OBJECT_COUNTS}
    out["fit"] = fit_size(out)
    return out


# --- fits, extrapolation, crossings -----------------------------------------------------------


def fit_size(size: dict) -> dict:
    """Least squares over the 6 medians of one size: ms = a + b * steps + c * masks.

    steps: tokens the loop emits (the final </s> included); masks: objects decoded from <loc> states
    (n in perception mode, 0 in text_box mode). a: fixed cost (prompt, prefill); b: one decoding step;
    c: one object's mask work (feedback during generation plus decoding after it)."""
    X, y = [], []
    for mode, m in size["modes"].items():
        for n, row in m["by_objects"].items():
            X.append([1.0, row["steps"], int(n) if mode == "perception" else 0])
            y.append(row["median_ms"])
    coef, *_ = np.linalg.lstsq(np.array(X), np.array(y), rcond=None)
    pred = np.array(X) @ coef
    return {"a_ms": float(coef[0]), "b_ms_per_step": float(coef[1]), "c_ms_per_mask": float(coef[2]),
            "max_abs_residual_ms": float(np.abs(pred - np.array(y)).max())}


def scaling_fit(sizes: list) -> dict:
    """Across sizes: a and b linear in LM parameters P (a = a0 + a1 P, b = b0 + b1 P), c the median.
    steps: the forced answers' step counts per mode and object count (the same at every size)."""
    P = np.array([s["lm_parameters"] for s in sizes], float)
    A = np.stack([np.ones_like(P), P], 1)
    a = np.linalg.lstsq(A, np.array([s["fit"]["a_ms"] for s in sizes]), rcond=None)[0]
    b = np.linalg.lstsq(A, np.array([s["fit"]["b_ms_per_step"] for s in sizes]), rcond=None)[0]
    steps = {mode: {n: row["steps"] for n, row in m["by_objects"].items()} for mode, m in sizes[0]["modes"].items()}
    return {"a0_ms": float(a[0]), "a1_ms_per_param": float(a[1]), "b0_ms": float(b[0]), "b1_ms_per_param": float(b[1]),
            "c_ms_per_mask": float(statistics.median(s["fit"]["c_ms_per_mask"] for s in sizes)), "steps": steps}


def predicted_ratio(fit: dict, params: float, n: int) -> float:
    """text_box / perception latency at ``params`` LM parameters and n objects, from ``scaling_fit``."""
    a = fit["a0_ms"] + fit["a1_ms_per_param"] * params
    b = fit["b0_ms"] + fit["b1_ms_per_param"] * params
    text = a + b * fit["steps"]["text_box"][str(n)]
    perc = a + b * fit["steps"]["perception"][str(n)] + fit["c_ms_per_mask"] * n
    return text / perc


def limit_ratio(fit: dict, n: int) -> float:
    """The ratio as parameters grow without bound (the per-parameter parts of a and b dominate)."""
    a1, b1 = fit["a1_ms_per_param"], fit["b1_ms_per_param"]
    return (a1 + b1 * fit["steps"]["text_box"][str(n)]) / (a1 + b1 * fit["steps"]["perception"][str(n)])


def crossing(sizes: list, fit: dict, n: int, target: float) -> dict:
    """LM parameters where the n-object ratio reaches ``target``: interpolated in log P between the
    measured sizes when they bracket it, else solved on the extrapolation (bisection in log P)."""
    P = [s["lm_parameters"] for s in sizes]
    r = [s["ratio"][str(n)] for s in sizes]
    if r[0] >= target:
        return {"params": P[0], "how": "measured: already at the smallest size"}
    for i in range(1, len(P)):
        if r[i - 1] < target <= r[i]:
            t = (target - r[i - 1]) / (r[i] - r[i - 1])
            return {"params": math.exp(math.log(P[i - 1]) + t * (math.log(P[i]) - math.log(P[i - 1]))),
                    "how": "measured: interpolated in log parameters between two sizes"}
    lo, hi = math.log(P[-1]), math.log(1e13)
    f = lambda lp: predicted_ratio(fit, math.exp(lp), n) - target  # noqa: E731
    if f(lo) >= 0 or f(hi) < 0:
        return {"params": None, "how": f"not reached: the extrapolation tends to {limit_ratio(fit, n):.2f}x"}
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return {"params": math.exp(hi), "how": "extrapolated beyond the largest measured size"}


def summarise(sizes: list) -> dict:
    fit = scaling_fit(sizes)
    return {
        "scaling_fit": fit,
        "predicted_ratio_at_7B": {str(n): predicted_ratio(fit, EXTRAPOLATE_TO, n) for n in OBJECT_COUNTS},
        "limit_ratio": {str(n): limit_ratio(fit, n) for n in OBJECT_COUNTS},
        "crossings": {str(n): {f"{t:g}x": crossing(sizes, fit, n, t) for t in TARGETS} for n in OBJECT_COUNTS},
    }


# --- output -----------------------------------------------------------------------------------


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, fit = report["sizes"], report["summary"]["scaling_fit"]
    P = [s["lm_parameters"] for s in sizes]
    grid = np.geomspace(P[0], EXTRAPOLATE_TO, 60)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for n, color in zip(OBJECT_COUNTS, ("tab:blue", "tab:orange", "tab:green")):
        ax.plot(P, [s["ratio"][str(n)] for s in sizes], "o-", color=color, label=f"{n} object{'s' * (n > 1)}, measured")
        ax.plot(grid, [predicted_ratio(fit, p, n) for p in grid], ":", color=color, label=f"{n}, fit a+b*steps+c*masks")
    for t in TARGETS:
        ax.axhline(t, color="gray", lw=0.8, ls="--")
    ax.axvline(EXTRAPOLATE_TO, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("language-model parameters (random init, fp32, CPU)")
    ax.set_ylabel("latency ratio text_box / perception (CPU time)")
    ax.set_title(f"forced reference answers through the generation loop ({report['profile']})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _params(p) -> str:
    return "n/a" if p is None else (f"{p / 1e9:.1f}B" if p >= 1e9 else f"{p / 1e6:.0f}M" if p >= 1e6 else f"{p / 1e3:.0f}k")


def format_table(report: dict) -> str:
    lines = ["| LM (params) | mode | latency 1 / 3 / 5 objects (ms, median CPU time) | ms per object | tokens per object "
             "(location / whole answer) | KV cache at 3 objects (KiB) | ratio text_box / perception at 1 / 3 / 5 |",
             "|---|---|---|---|---|---|---|"]
    for s in report["sizes"]:
        for mode in MODES:
            m = s["modes"][mode]
            lat = " / ".join(f"{m['by_objects'][str(n)]['median_ms']:.0f}" for n in OBJECT_COUNTS)
            ratio = (" / ".join(f"{s['ratio'][str(n)]:.2f}x" for n in OBJECT_COUNTS)
                     + " (wall: " + " / ".join(f"{s['wall_ratio'][str(n)]:.2f}x" for n in OBJECT_COUNTS) + ")"
                     if mode == "text_box" else "")
            lines.append(f"| {s['name']} ({_params(s['lm_parameters'])}) | {mode} | {lat} | {m['ms_per_object']:.1f} | "
                         f"{m['location_tokens_per_object']:.2f} / {m['answer_tokens_per_object']:.1f} | "
                         f"{m['by_objects']['3']['kv_cache_bytes'] / 1024:.0f} | {ratio} |")
    summ = report["summary"]
    lines += ["", "| objects | ratio at 2x reached at | ratio at 3x reached at | predicted ratio at 7B | limit |",
              "|---|---|---|---|---|"]
    for n in OBJECT_COUNTS:
        c = summ["crossings"][str(n)]
        cell = lambda d: f"{_params(d['params'])} ({d['how']})"  # noqa: E731
        lines.append(f"| {n} | {cell(c['2x'])} | {cell(c['3x'])} | {summ['predicted_ratio_at_7B'][str(n)]:.2f}x | "
                     f"{summ['limit_ratio'][str(n)]:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap, out_of = profile_arguments(__doc__, "smoke profile (seconds): two small LMs, one repetition",
                                   "model_size.json and model_size.png", RESULTS, QUICK_OUT)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per size (profile default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    a = ap.parse_args(argv)

    import torch

    from perception.pipeline import backbone_tokenizer
    from perception.presets import get_preset

    name = "quick" if a.quick else "full"
    profile = dict(PROFILES[name])
    if a.reps is not None:
        if a.reps < 1:
            raise SystemExit(f"--reps must be at least 1; got {a.reps}")
        profile["reps"] = a.reps
    out = out_of(a)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    tokenizer = backbone_tokenizer(get_preset("tiny"))
    scenes = {n: count_scenes(n, 1)[0] for n in OBJECT_COUNTS}
    sizes = []
    for size_name, text in profile["sizes"].items():
        t0 = time.perf_counter()
        s = measure_size(text, scenes, profile["reps"], tokenizer)
        s["name"], s["seconds"] = size_name, round(time.perf_counter() - t0, 1)
        sizes.append(s)
        print(f"[model_size] {size_name} ({_params(s['lm_parameters'])} LM parameters): ratio at 1/3/5 objects "
              + " / ".join(f"{s['ratio'][str(n)]:.2f}x" for n in OBJECT_COUNTS) + f" ({s['seconds']:.0f} s)", flush=True)
    sizes.sort(key=lambda s: s["lm_parameters"])
    report = {
        "benchmark": "model_size",
        "profile": name,
        "command": "python bench/model_size.py" + (" --quick" if a.quick else "") + (f" --reps {a.reps}" if a.reps else "")
                   + (f" --threads {a.threads}" if a.threads != 1 else ""),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "threads": a.threads,
                    "note": "shared machine: other processes ran; the modes are interleaved per repetition; "
                            "medians of process CPU time (wall time kept as wall_median_ms)"},
        "config": {"preset": "tiny", "dtype": "float32", "device": "cpu", "init": "random, seed 0", "reps": profile["reps"],
                   "object_counts": list(OBJECT_COUNTS), "scene_seeds": {str(n): s.meta["seed"] for n, s in scenes.items()},
                   "questions": {str(n): s.turns[0].user for n, s in scenes.items()}},
        "sizes": sizes,
        "summary": summarise(sizes),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_report(report, out / "model_size.json", out / "model_size.png", plot, format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
