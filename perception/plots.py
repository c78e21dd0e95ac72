"""Training curves from ``metrics.jsonl`` as PNG: ``python -m perception.plots RUN_DIR [--out PNG]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_metrics(run_dir) -> tuple[list, list]:
    rows, evals = [], []
    for line in open(Path(run_dir) / "metrics.jsonl"):
        r = json.loads(line)
        (evals if "eval" in r else rows).append(r)
    return rows, evals


def smooth(x, k: int = 50):
    x = np.asarray(x, float)
    if len(x) < k:
        return x
    c = np.cumsum(np.insert(x, 0, 0))
    return (c[k:] - c[:-k]) / k


def plot_run(run_dir, out=None, title=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, evals = read_metrics(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = np.array([r["step"] for r in rows])
    for key in ("ce", "mask_bce", "mask_dice", "click", "box_giou"):
        vals = [r.get(key, np.nan) for r in rows]
        s = smooth(vals)
        axes[0].plot(steps[len(steps) - len(s):], s, label=key)
    axes[0].set_xlabel("step"); axes[0].set_ylabel("training loss (moving mean, 50 steps)")
    axes[0].set_yscale("log"); axes[0].legend(); axes[0].grid(alpha=0.3)
    if evals:
        es = [e["step"] for e in evals]
        for key in sorted({k for e in evals for k in e["eval"]}):
            axes[1].plot(es, [e["eval"].get(key, np.nan) for e in evals], marker="o", label=key)
        axes[1].set_ylim(0, 1.02); axes[1].legend(fontsize=8, ncol=2)
    axes[1].set_xlabel("step"); axes[1].set_ylabel("held-out ShapesRef metric"); axes[1].grid(alpha=0.3)
    fig.suptitle(title or f"training curves: {run_dir}")
    fig.tight_layout()
    out = Path(out or Path(run_dir) / "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    print(plot_run(a.run_dir, a.out, a.title))


if __name__ == "__main__":
    main()
