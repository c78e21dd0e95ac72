"""Training curves from ``metrics.jsonl`` as PNG: ``python -m perception.plots RUN [RUN ...] [--out PNG]``.

A RUN is a run folder or a ``metrics.jsonl`` file (the shipped model's are kept in docs/results/).

Several run folders are stages of one model (each warm-started from the previous one): they are
drawn one after another on one step axis, with a dashed line where a stage begins.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_metrics(run_dir) -> tuple[list, list]:
    """A run folder (its ``metrics.jsonl``) or a metrics file -> (training rows, evaluation rows)."""
    path = Path(run_dir)
    rows, evals = [], []
    for line in open(path if path.is_file() else path / "metrics.jsonl"):
        r = json.loads(line)
        (evals if "eval" in r else rows).append(r)
    return rows, evals


def smooth(x, k: int = 50):
    x = np.asarray(x, float)
    if len(x) < k:
        return x
    c = np.cumsum(np.insert(x, 0, 0))
    return (c[k:] - c[:-k]) / k


def read_stages(run_dirs) -> tuple[list, list, list]:
    """Metrics of consecutive stages on one step axis -> (rows, evals, stage start steps)."""
    rows, evals, starts, offset = [], [], [], 0
    for d in run_dirs:
        r, e = read_metrics(d)
        starts.append(offset)
        rows += [{**x, "step": x["step"] + offset} for x in r]
        evals += [{**x, "step": x["step"] + offset} for x in e]
        offset += max((x["step"] for x in r), default=0)
    return rows, evals, starts


def plot_run(run_dir, out=None, title=None) -> Path:
    """run_dir: one folder, or a list of stage folders in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    rows, evals, starts = read_stages(dirs)
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 6.5, 4.2), squeeze=False)
    axes = axes[0]  # one panel where the run has no periodic evaluation
    steps = np.array([r["step"] for r in rows])
    for key in ("ce", "mask_bce", "mask_dice", "click", "box_giou", "token_aux", "region_aux", "pointer", "proposal"):
        have = [i for i, r in enumerate(rows) if key in r]  # a loss part may exist in some stages only
        if not have:
            continue
        s = smooth([rows[i][key] for i in have])
        axes[0].plot(steps[have][len(have) - len(s):], s, label=key)
    for ax in axes:
        for x in starts[1:]:
            ax.axvline(x, color="grey", ls="--", lw=1)
    axes[0].set_xlabel("step"); axes[0].set_ylabel("training loss (moving mean, 50 steps)")
    axes[0].set_yscale("log"); axes[0].legend(); axes[0].grid(alpha=0.3)
    if evals:
        es = [e["step"] for e in evals]
        for key in sorted({k for e in evals for k in e["eval"]}):
            axes[1].plot(es, [e["eval"].get(key, np.nan) for e in evals], marker="o", label=key)
        axes[1].set_ylim(0, 1.02); axes[1].legend(fontsize=8, ncol=2)
        axes[1].set_xlabel("step"); axes[1].set_ylabel("held-out ShapesRef metric"); axes[1].grid(alpha=0.3)
    fig.suptitle(title or f"training curves: {' + '.join(map(str, dirs))}")
    fig.tight_layout()
    last = Path(dirs[-1])
    out = Path(out or (last.with_suffix(".png") if last.is_file() else last / "curves.png"))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir", nargs="+", help="run folder(s) or metrics.jsonl file(s); several = consecutive stages")
    p.add_argument("--out", default=None)
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    print(plot_run(a.run_dir, a.out, a.title))


if __name__ == "__main__":
    main()
