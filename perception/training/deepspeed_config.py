"""A DeepSpeed JSON config, read and checked against the training config (DeepSpeed not needed).

The training YAML owns everything the loop already decides: the optimizer (AdamW with its
per-module learning-rate groups, ``lr_scale``), the schedule (``lr_at``), the per-process batch, bf16
and gradient clipping. The JSON adds only what is DeepSpeed's own: the ZeRO stage and its buffers.
"""

from __future__ import annotations

import json
from pathlib import Path


def check_deepspeed_config(path, tc=None) -> dict:
    """Read and validate a DeepSpeed JSON config; returns the dict.

    Checks: a JSON object; no "auto" values (those need the HF Trainer integration, not used here);
    no "optimizer" or "scheduler" section (the trainer builds AdamW from the YAML so that ``lr_scale``
    groups survive, and sets the learning rate each step); ``zero_optimization.stage`` in {0, 1, 2, 3};
    ``gradient_accumulation_steps`` a positive integer when present; not both bf16 and fp16. Against
    the training config ``tc`` when given: ``train_micro_batch_size_per_gpu`` equals ``tc.batch_size``
    (per process), ``gradient_clipping`` is present and equals ``tc.grad_clip`` (DeepSpeed 0.19 clips
    at 1.0 when the key is missing), ``bf16.enabled`` equals ``tc.bf16`` when present.
    """
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"DeepSpeed config {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"DeepSpeed config {path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"DeepSpeed config {path} must be a JSON object")
    auto = _auto_keys(cfg)
    if auto:
        raise ValueError(f"DeepSpeed config {path}: 'auto' values need concrete numbers here: {auto}")
    for section in ("optimizer", "scheduler"):
        if section in cfg:
            raise ValueError(f"DeepSpeed config {path}: remove the {section!r} section; the training YAML sets "
                             "lr, betas, weight_decay, lr_scale, warmup and min_lr_ratio, and the trainer builds "
                             "the optimizer and schedule from them")
    stage = (cfg.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"DeepSpeed config {path}: zero_optimization.stage must be 0, 1, 2 or 3; got {stage!r}")
    acc = cfg.get("gradient_accumulation_steps", 1)
    if not isinstance(acc, int) or isinstance(acc, bool) or acc < 1:
        raise ValueError(f"DeepSpeed config {path}: gradient_accumulation_steps must be a positive integer; got {acc!r}")
    bf16 = bool((cfg.get("bf16") or {}).get("enabled", False))
    fp16 = bool((cfg.get("fp16") or {}).get("enabled", False))
    if bf16 and fp16:
        raise ValueError(f"DeepSpeed config {path}: bf16 and fp16 cannot both be enabled")
    if tc is not None:
        _check_against(path, cfg, tc, bf16)
    return cfg


def _check_against(path: Path, cfg: dict, tc, bf16: bool) -> None:
    micro = cfg.get("train_micro_batch_size_per_gpu")
    if micro is not None and micro != tc.batch_size:
        raise ValueError(f"DeepSpeed config {path}: train_micro_batch_size_per_gpu={micro} but the training "
                         f"config's batch_size={tc.batch_size} (per process); make them equal")
    clip = cfg.get("gradient_clipping")
    if clip is None:
        raise ValueError(f"DeepSpeed config {path}: set \"gradient_clipping\" explicitly (the training config's "
                         f"grad_clip={tc.grad_clip}); without it DeepSpeed clips at 1.0")
    if clip != tc.grad_clip:
        raise ValueError(f"DeepSpeed config {path}: gradient_clipping={clip} but the training config's "
                         f"grad_clip={tc.grad_clip}; make them equal")
    if "bf16" in cfg and bf16 != tc.bf16:
        raise ValueError(f"DeepSpeed config {path}: bf16.enabled={bf16} but the training config's bf16={tc.bf16}")


def _auto_keys(d: dict, prefix: str = "") -> list:
    found = []
    for k, v in d.items():
        if isinstance(v, dict):
            found += _auto_keys(v, f"{prefix}{k}.")
        elif v == "auto":
            found.append(prefix + k)
    return found
