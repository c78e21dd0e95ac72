"""The trainer: ``python -m perception train --config configs/NAME.yaml``.

One loop for every engine (``perception/training/engines.py``): a single process, DDP under
``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on GPU), or -- when ``deepspeed`` names a JSON
config -- DeepSpeed ZeRO (on GPUs, and on CPU with gloo). Only rank 0 evaluates and writes its
files. Checkpoints (``output_dir/checkpoint-STEP``, ``perception/training/checkpoints.py``) are
written atomically and hold the model (save_pretrained format), the step and the optimizer state; a
run restarted with the same command continues from ``output_dir/latest``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from perception.config import TrainConfig
from perception.training.checkpoints import latest_checkpoint, read_trainer_state, save_checkpoint
from perception.training.deepspeed_config import check_deepspeed_config  # noqa: F401  (public here)
from perception.training.engines import DistInfo, Engine, build_engine, param_groups  # noqa: F401


def load_train_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file -> TrainConfig; ``overrides`` like ["steps=100", "data.num_workers=0"]."""
    import yaml

    with open(path) as f:
        d = yaml.safe_load(f) or {}
    for ov in overrides or []:
        key, _, value = ov.partition("=")
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return TrainConfig.from_dict(d)


def _deep_update(d: dict, upd: dict) -> dict:
    for k, v in upd.items():
        d[k] = _deep_update(d.get(k, {}), v) if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return d


def build_model(tc: TrainConfig):
    """A fresh model from a preset (+ model_overrides) or an existing checkpoint folder."""
    from perception.checkpoint import from_pretrained
    from perception.config import PerceptionConfig
    from perception.model import PerceptionModel
    from perception.presets import PRESETS, get_preset

    if tc.model in PRESETS:
        cfg = get_preset(tc.model)
        if tc.model_overrides:
            cfg = PerceptionConfig.from_dict(_deep_update(cfg.to_dict(), tc.model_overrides))
        if cfg.backbone.kind == "stem-llama":
            from perception.tokenizer import build_tiny_tokenizer

            tok = build_tiny_tokenizer()
        else:
            from perception.pipeline import backbone_tokenizer

            tok = backbone_tokenizer(cfg)
        model = PerceptionModel(cfg, tok)
        if cfg.lora.enabled:
            from perception.lora import apply_lora

            apply_lora(model)
        if cfg.mask_head.kind == "sam" and cfg.mask_head.sam_checkpoint:
            model.mask_head.load_sam_checkpoint(cfg.mask_head.sam_checkpoint)  # clear error when missing
        if tc.init_from:
            warm_start(model, tc.init_from, skip=tc.init_skip)
    else:
        model = from_pretrained(tc.model).train()
    return freeze(model, tc.freeze)


def freeze(model, prefixes: list):
    """Stop training every parameter whose name starts with one of ``prefixes``. ValueError names a
    prefix that matches no parameter (a typo would otherwise train everything silently)."""
    for prefix in prefixes:
        hits = [p for n, p in model.named_parameters() if n.startswith(prefix)]
        if not hits:
            raise ValueError(f"freeze: no parameter name starts with {prefix!r}")
        for p in hits:
            p.requires_grad_(False)
    return model


def lr_at(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup:
        return (step + 1) / tc.warmup
    t = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _output_dir(tc: TrainConfig, rank: int) -> Path:
    """The run folder; rank 0 creates it and records the config."""
    out = Path(tc.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(tc.to_dict(), indent=1))
    return out


def make_collator(model, tc: TrainConfig, seed: int = 0):
    """The Collator that training config ``tc`` feeds ``model`` with (its click settings; ``seed``
    drives the collator's random choices)."""
    from perception.data.collate import Collator

    return Collator(model.config, model.tokenizer, model.backbone.num_image_tokens,
                    clicks_per_image=tc.data.clicks_per_image, click_teacher=tc.data.click_teacher, seed=seed)


def make_loader(model, tc: TrainConfig, rank: int, world: int, start: int) -> DataLoader:
    """The batch stream of one rank, continuing after ``start`` steps (fresh samples on resume)."""
    from perception.data.streams import build_stream

    collate = make_collator(model, tc, seed=tc.seed * 7919 + rank * 104729 + start)
    stream = build_stream(tc.data, tc.seed, rank, world, start * tc.batch_size)
    return DataLoader(stream, batch_size=tc.batch_size, collate_fn=collate,
                      num_workers=tc.data.num_workers, persistent_workers=tc.data.num_workers > 0,
                      prefetch_factor=4 if tc.data.num_workers > 0 else None)


def warm_start(model, folder, skip: list = ()) -> dict:
    """Copy every tensor of checkpoint ``folder`` whose name and shape the model shares and whose
    name starts with none of ``skip``; the rest of the model keeps its fresh initialisation. Prints
    and returns what was copied / left fresh / skipped."""
    from perception.checkpoint import INDEX_NAME, load_sharded

    state = load_sharded(Path(folder), INDEX_NAME)
    own = model.state_dict()
    copied = {k: v for k, v in state.items()
              if k in own and own[k].shape == v.shape and not any(k.startswith(p) for p in skip)}
    model.load_state_dict(copied, strict=False)
    report = {
        "copied": len(copied),
        "fresh": sorted(k for k in own if k not in copied),
        "skipped": sorted(k for k in state if k not in copied),
    }
    print(f"warm start from {folder}: {report['copied']} tensors copied; fresh: {len(report['fresh'])} "
          f"{_prefixes(report['fresh'])}; skipped: {len(report['skipped'])} {_prefixes(report['skipped'])}")
    return report


def _prefixes(keys) -> list:
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def train(tc: TrainConfig, eval_fn=None, progress: bool = True, on_end=None) -> Path:
    """Run (or resume) training; returns the output folder.

    eval_fn(model, tc) -> dict: rank 0's periodic evaluation (every ``tc.eval_every`` steps and at
    the end). on_end(model, rank): called on every rank with the trained model after the last step,
    while the process group is still up (tests compare ranks with it).
    """
    from tqdm import tqdm

    from perception.data.collate import to_device

    info = DistInfo.from_env()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out = _output_dir(tc, info.rank)
    resume = latest_checkpoint(out)
    torch.manual_seed(tc.seed)  # the same fresh model on every rank
    model, start, state = _load_or_build(tc, resume)
    torch.manual_seed(tc.seed + info.rank)
    engine = build_engine(model, tc, info)
    try:
        if resume is not None:
            engine.load_state(resume, state, out)
        it = iter(make_loader(model, tc, info.rank, info.world, start))
        run = _Run(tc, engine, out, eval_fn,
                   log=open(out / "metrics.jsonl", "a") if info.rank == 0 else None,
                   bar=tqdm(total=tc.steps, initial=start, disable=not progress or info.rank != 0, dynamic_ncols=True))
        step = start
        while step < tc.steps:
            batch = to_device(next(it), engine.device)
            f = lr_at(step, tc)
            engine.set_lr(f)
            losses = engine.forward(batch)
            grad_norm = engine.step(losses["loss"])
            step += 1
            run.end_of_step(step, tc.lr * f, losses, grad_norm)
        run.close()
        if on_end is not None:
            on_end(engine.model, info.rank)
    finally:
        engine.close()
    return out


def _load_or_build(tc: TrainConfig, resume):
    """(model in train mode, first step, trainer_state) from the resume folder, or a fresh model."""
    from perception.checkpoint import from_pretrained

    if resume is None:
        return build_model(tc).train(), 0, {}
    model = from_pretrained(resume).train()
    if model.config.lora.enabled and not getattr(model, "lora_applied", False):
        from perception.lora import apply_lora

        apply_lora(model)
    state = read_trainer_state(resume)
    return freeze(model, tc.freeze), state["step"], state  # frozen parts stay frozen (the optimizer state has no slots for them)


@dataclass
class _Run:
    """What happens after every optimizer step, for every engine: log, progress bar, save, evaluate."""

    tc: TrainConfig
    engine: Engine
    out: Path
    eval_fn: object
    log: object  # metrics.jsonl on rank 0, else None
    bar: object  # tqdm (disabled off rank 0)

    def __post_init__(self):
        self.t0 = time.time()

    def end_of_step(self, step: int, lr: float, losses: dict, grad_norm: float) -> None:
        tc, rank = self.tc, self.engine.info.rank
        parts = {k: round(float(v.detach()), 4) for k, v in losses.items()}
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items() if k != "loss"} | {"loss": f"{parts['loss']:.3f}"},
                             refresh=False)
        self.bar.update(1)
        if rank == 0:
            self.log.write(json.dumps({"step": step, "time": round(time.time() - self.t0, 2), "lr": lr,
                                       "grad_norm": round(grad_norm, 3), **parts}) + "\n")
            if step % 20 == 0:
                self.log.flush()
        if step % tc.save_every == 0 or step == tc.steps:
            files, state = self.engine.save_state(self.out, step)  # collective (DeepSpeed's shards)
            if rank == 0:
                save_checkpoint(self.engine.model, step, tc, self.out, files, state)
        if rank == 0 and self.eval_fn is not None and tc.eval_every and (step % tc.eval_every == 0 or step == tc.steps):
            model = self.engine.model
            model.eval()
            res = self.eval_fn(model, tc)
            model.train()
            self.log.write(json.dumps({"step": step, "eval": res}) + "\n")
            self.log.flush()
            self.bar.write(f"step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float)))
        self.engine.barrier()

    def close(self) -> None:
        self.bar.close()
        if self.log is not None:
            self.log.close()
