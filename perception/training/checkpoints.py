"""The run folder: ``output_dir/checkpoint-STEP`` folders, written atomically by rank 0, and the
``latest`` file naming the newest one (a restarted run continues from it).

A checkpoint folder holds the model (``save_pretrained`` format, loads with ``from_pretrained``),
``trainer_state.json`` (step, training config, and what the engine recorded) and whatever files the
engine adds (the plain engine: ``optimizer.pt``). DeepSpeed's per-rank optimizer shards live apart,
under ``output_dir/deepspeed/<tag>``, and are pruned here with the folders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def latest_checkpoint(out: Path):
    """The folder ``out/latest`` names, or None when there is none yet."""
    f = Path(out) / "latest"
    if f.is_file():
        p = Path(out) / f.read_text().strip()
        if p.is_dir():
            return p
    return None


def read_trainer_state(folder: Path) -> dict:
    """``trainer_state.json`` of a checkpoint folder: ``{"step": int, "train_config": dict, ...}``."""
    return json.loads((Path(folder) / "trainer_state.json").read_text())


def save_checkpoint(model, step: int, tc, out: Path, files: dict | None = None, state: dict | None = None) -> Path:
    """Write ``out/checkpoint-STEP`` atomically (rank 0 only), point ``latest`` at it, prune old ones.

    files: name -> object saved with ``torch.save`` inside the folder. state: extra entries for
    ``trainer_state.json``. Keeps the newest ``tc.keep_checkpoints`` folders (and DeepSpeed tags).
    """
    from perception.checkpoint import atomic_dir, write_model

    final = out / f"checkpoint-{step:06d}"
    with atomic_dir(final) as tmp:
        write_model(model, tmp)
        for name, obj in (files or {}).items():
            torch.save(obj, tmp / name)
        (tmp / "trainer_state.json").write_text(
            json.dumps({"step": step, **(state or {}), "train_config": tc.to_dict()}, indent=1))
    tmp_latest = out / ".latest.tmp"
    tmp_latest.write_text(final.name)
    os.replace(tmp_latest, out / "latest")
    for pattern in ("checkpoint-*", "deepspeed/step*"):
        for old in sorted(out.glob(pattern))[: -tc.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    return final
