"""The trainer: ``python -m perception train --config configs/NAME.yaml``.

Single process, or DDP under ``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on GPU), or -- when
``deepspeed`` names a JSON config -- DeepSpeed's engine (ZeRO, GPU; ``_train_deepspeed``). Only
rank 0 evaluates and writes. Checkpoints (``output_dir/checkpoint-STEP``) are written atomically
and hold the model (save_pretrained format), the optimizer and the step; a run restarted with the
same command continues from ``output_dir/latest``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from perception.config import TrainConfig


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


def last_step(tc: TrainConfig) -> int:
    """The step a run ends at: ``stop_at`` when set (the schedule still spans ``steps``), else ``steps``."""
    return min(tc.steps, tc.stop_at) if tc.stop_at else tc.steps


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


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
            warm_start(model, tc.init_from)
        return model
    return from_pretrained(tc.model).train()


def _param_groups(model, tc: TrainConfig):
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        for prefix, s in tc.lr_scale.items():
            if name.startswith(prefix):
                scale = s
        decay = p.ndim >= 2 and "embed" not in name
        groups.setdefault((scale, decay), []).append(p)
    return [
        {"params": ps, "lr": tc.lr * s, "lr_scale": s, "weight_decay": tc.weight_decay if d else 0.0}
        for (s, d), ps in groups.items()
    ]


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


def make_loader(model, tc: TrainConfig, rank: int, world: int, start: int) -> DataLoader:
    """The batch stream of one rank, continuing after ``start`` steps (fresh samples on resume)."""
    from perception.data.collate import Collator
    from perception.data.streams import build_stream

    collate = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens,
                       clicks_per_image=tc.data.clicks_per_image, click_teacher=tc.data.click_teacher,
                       seed=tc.seed * 7919 + rank * 104729 + start)
    stream = build_stream(tc.data, tc.seed, rank, world, start * tc.batch_size)
    return DataLoader(stream, batch_size=tc.batch_size, collate_fn=collate,
                      num_workers=tc.data.num_workers, persistent_workers=tc.data.num_workers > 0,
                      prefetch_factor=4 if tc.data.num_workers > 0 else None)


def latest_checkpoint(out: Path):
    f = out / "latest"
    if f.is_file():
        p = out / f.read_text().strip()
        if p.is_dir():
            return p
    return None


def save_checkpoint(model, opt, step: int, tc: TrainConfig, out: Path) -> Path:
    from perception.checkpoint import atomic_dir, write_model

    final = out / f"checkpoint-{step:06d}"
    with atomic_dir(final) as tmp:
        write_model(model, tmp)
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "train_config": tc.to_dict()}, indent=1))
    tmp_latest = out / ".latest.tmp"
    tmp_latest.write_text(final.name)
    os.replace(tmp_latest, out / "latest")
    ckpts = sorted(out.glob("checkpoint-*"))
    for old in ckpts[: -tc.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def warm_start(model, folder) -> dict:
    """Copy every tensor of checkpoint ``folder`` whose name and shape the model shares; the rest of
    the model keeps its fresh initialisation. Prints and returns what was copied / left fresh / skipped."""
    from perception.checkpoint import INDEX_NAME, load_sharded

    state = load_sharded(Path(folder), INDEX_NAME)
    own = model.state_dict()
    copied = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
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


def train(tc: TrainConfig, eval_fn=None, progress: bool = True) -> Path:
    """Run (or resume) training. Returns the output folder. ``eval_fn(model, tc) -> dict``."""
    from tqdm import tqdm

    from perception.checkpoint import from_pretrained
    from perception.data.collate import to_device

    if tc.deepspeed:  # a separate loop: DeepSpeed's engine owns backward, clipping and the optimizer step
        return _train_deepspeed(tc, eval_fn, progress)
    world, rank, local = _dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed + rank)
    out = _output_dir(tc, rank)

    resume = latest_checkpoint(out)
    start = 0
    if resume is not None:
        model = from_pretrained(resume).train()
        if model.config.lora.enabled and not getattr(model, "lora_applied", False):
            from perception.lora import apply_lora

            apply_lora(model)
        start = json.loads((resume / "trainer_state.json").read_text())["step"]
    else:
        model = build_model(tc).train()
    model.to(device)
    opt = torch.optim.AdamW(_param_groups(model, tc), lr=tc.lr, betas=tuple(tc.betas))
    if resume is not None:
        opt.load_state_dict(torch.load(resume / "optimizer.pt", map_location=device, weights_only=True))
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local] if device.type == "cuda" else None, find_unused_parameters=True
        )

    loader = make_loader(model, tc, rank, world, start)
    log = open(out / "metrics.jsonl", "a") if rank == 0 else None
    end = last_step(tc)
    bar = tqdm(total=end, initial=start, disable=not progress or rank != 0, dynamic_ncols=True)
    it = iter(loader)
    step = start
    t0 = time.time()
    while step < end:
        batch = to_device(next(it), device)
        f = lr_at(step, tc)
        for g in opt.param_groups:
            g["lr"] = tc.lr * g["lr_scale"] * f
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
            losses = ddp_model(batch)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        parts = {k: round(float(v.detach()), 4) for k, v in losses.items()}
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items() if k != "loss"} | {"loss": f"{parts['loss']:.3f}"}, refresh=False)
        bar.update(1)
        if rank == 0:
            log.write(json.dumps({"step": step, "time": round(time.time() - t0, 2), "lr": tc.lr * f,
                                  "grad_norm": round(float(gnorm), 3), **parts}) + "\n")
            if step % 20 == 0:
                log.flush()
            if step % tc.save_every == 0 or step == end:
                save_checkpoint(model, opt, step, tc, out)
                _ddp_check_writer(rank, step)
            if eval_fn is not None and tc.eval_every and (step % tc.eval_every == 0 or step == end):
                model.eval()
                res = eval_fn(model, tc)
                model.train()
                log.write(json.dumps({"step": step, "eval": res}) + "\n")
                log.flush()
                bar.write(f"step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float)))
        if world > 1:
            dist.barrier()
    bar.close()
    _ddp_check_params(model, rank)
    if log:
        log.close()
    if world > 1:
        dist.destroy_process_group()
    return out


def _ddp_check_writer(rank: int, step: int) -> None:
    """Test hook (PERCEPTION_DDP_CHECK=folder): record which rank wrote a checkpoint."""
    d = os.environ.get("PERCEPTION_DDP_CHECK")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / f"writer-{step}-{os.getpid()}").write_text(str(rank))


def _ddp_check_params(model, rank: int) -> None:
    """Test hook: save a fingerprint of every parameter so a test can compare ranks."""
    d = os.environ.get("PERCEPTION_DDP_CHECK")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        fp = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
        torch.save(fp, Path(d) / f"rank{rank}.pt")


# --- DeepSpeed (optional; GPU runs) -------------------------------------------------------------
# Kept apart from the loop above on purpose: the engine owns backward, gradient clipping, the
# optimizer (built from the JSON's "optimizer" section) and its sharded state. We still set the
# learning rate each step from ``lr_at`` and write checkpoints in our own format (rank 0), plus
# DeepSpeed's per-rank optimizer shards under ``output_dir/deepspeed/<tag>`` for resuming.


def check_deepspeed_config(path, tc: TrainConfig | None = None) -> dict:
    """Read and validate a DeepSpeed JSON config without DeepSpeed installed; returns the dict.

    Checks: a JSON object; no "auto" values (those need the HF Trainer integration, not used here);
    ``zero_optimization.stage`` in {0, 1, 2, 3}; ``train_micro_batch_size_per_gpu`` equals
    ``tc.batch_size`` (our per-process batch) and ``gradient_accumulation_steps`` is a positive
    integer, when present; not both bf16 and fp16; ``bf16.enabled`` equals ``tc.bf16`` when present.
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
    stage = (cfg.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"DeepSpeed config {path}: zero_optimization.stage must be 0, 1, 2 or 3; got {stage!r}")
    micro = cfg.get("train_micro_batch_size_per_gpu")
    if micro is not None and tc is not None and micro != tc.batch_size:
        raise ValueError(f"DeepSpeed config {path}: train_micro_batch_size_per_gpu={micro} but the training "
                         f"config's batch_size={tc.batch_size} (per process); make them equal")
    acc = cfg.get("gradient_accumulation_steps", 1)
    if not isinstance(acc, int) or isinstance(acc, bool) or acc < 1:
        raise ValueError(f"DeepSpeed config {path}: gradient_accumulation_steps must be a positive integer; got {acc!r}")
    bf16 = bool((cfg.get("bf16") or {}).get("enabled", False))
    fp16 = bool((cfg.get("fp16") or {}).get("enabled", False))
    if bf16 and fp16:
        raise ValueError(f"DeepSpeed config {path}: bf16 and fp16 cannot both be enabled")
    if "bf16" in cfg and tc is not None and bf16 != tc.bf16:
        raise ValueError(f"DeepSpeed config {path}: bf16.enabled={bf16} but the training config's bf16={tc.bf16}")
    return cfg


def _auto_keys(d, prefix="") -> list:
    found = []
    for k, v in d.items():
        if isinstance(v, dict):
            found += _auto_keys(v, f"{prefix}{k}.")
        elif v == "auto":
            found.append(prefix + k)
    return found


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError(
            "the training config sets `deepspeed` but DeepSpeed is not installed: pip install deepspeed "
            "(GPU machines with a CUDA toolkit; docs/TRAINING.md), or drop --deepspeed to train with plain DDP"
        ) from e
    return deepspeed


def _train_deepspeed(tc: TrainConfig, eval_fn=None, progress: bool = True) -> Path:
    """The DeepSpeed loop: same data, logging and checkpoint folders as ``train``."""
    from tqdm import tqdm

    from perception.checkpoint import from_pretrained
    from perception.data.collate import to_device

    ds_json = check_deepspeed_config(tc.deepspeed, tc)
    deepspeed = _import_deepspeed()
    world, rank, local = _dist_info()
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(tc.seed + rank)
    out = _output_dir(tc, rank)
    resume = latest_checkpoint(out)
    start, tag = 0, None
    if resume is not None:
        model = from_pretrained(resume).train()
        if model.config.lora.enabled and not getattr(model, "lora_applied", False):
            from perception.lora import apply_lora

            apply_lora(model)
        state = json.loads((resume / "trainer_state.json").read_text())
        start, tag = state["step"], state.get("deepspeed_tag")
    else:
        model = build_model(tc).train()
    model.to(device)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_json
    )
    if tag and (out / "deepspeed" / tag).is_dir():
        engine.load_checkpoint(str(out / "deepspeed"), tag=tag, load_module_strict=False)
    bf16 = bool((ds_json.get("bf16") or {}).get("enabled", False))

    loader = make_loader(model, tc, rank, world, start)
    log = open(out / "metrics.jsonl", "a") if rank == 0 else None
    end = last_step(tc)
    bar = tqdm(total=end, initial=start, disable=not progress or rank != 0, dynamic_ncols=True)
    it = iter(loader)
    step, t0 = start, time.time()
    while step < end:
        batch = to_device(next(it), device)
        f = lr_at(step, tc)
        for g in engine.optimizer.param_groups:
            g["lr"] = tc.lr * f
        # bf16 engines cast the whole module; autocast lets the heads' explicit fp32 inputs meet bf16 weights
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = engine(batch)
        engine.backward(losses["loss"])
        engine.step()  # clips (gradient_clipping), steps, zeroes the gradients
        step += 1
        parts = {k: round(float(v.detach()), 4) for k, v in losses.items()}
        bar.update(1)
        if rank == 0:
            log.write(json.dumps({"step": step, "time": round(time.time() - t0, 2), "lr": tc.lr * f, **parts}) + "\n")
            if step % 20 == 0:
                log.flush()
        if step % tc.save_every == 0 or step == end:
            _save_deepspeed_checkpoint(engine, model, step, tc, out, rank)
        if rank == 0 and eval_fn is not None and tc.eval_every and (step % tc.eval_every == 0 or step == end):
            model.eval()
            res = eval_fn(model, tc)
            model.train()
            log.write(json.dumps({"step": step, "eval": res}) + "\n")
            log.flush()
    bar.close()
    if log:
        log.close()
    return out


def _save_deepspeed_checkpoint(engine, model, step: int, tc: TrainConfig, out: Path, rank: int) -> None:
    """All ranks write their optimizer shards (collective); rank 0 writes our model folder."""
    from perception.checkpoint import atomic_dir, write_model

    tag = f"step{step:06d}"
    engine.save_checkpoint(str(out / "deepspeed"), tag=tag, exclude_frozen_parameters=True)
    if rank != 0:
        return
    final = out / f"checkpoint-{step:06d}"
    with atomic_dir(final) as tmp:
        write_model(model, tmp)
        (tmp / "trainer_state.json").write_text(
            json.dumps({"step": step, "deepspeed_tag": tag, "train_config": tc.to_dict()}, indent=1))
    tmp_latest = out / ".latest.tmp"
    tmp_latest.write_text(final.name)
    os.replace(tmp_latest, out / "latest")
    for old in sorted(out.glob("checkpoint-*"))[: -tc.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    for old in sorted((out / "deepspeed").glob("step*"))[: -tc.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
