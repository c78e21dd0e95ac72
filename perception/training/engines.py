"""Step engines: how one optimizer step is taken, behind one interface, for the one loop in
``perception.train``.

- ``TorchEngine``: one process, or DDP under ``torchrun`` (gloo on CPU, nccl on GPU); torch AdamW.
- ``DeepSpeedEngine``: DeepSpeed's engine with the ZeRO stage of ``tc.deepspeed`` (a JSON file);
  the same AdamW and parameter groups, handed to ``deepspeed.initialize``, so the per-module
  learning rates (``lr_scale``) keep their own groups. Runs on GPUs (nccl) and on CPU (gloo,
  ``DS_ACCELERATOR=cpu``, set here when no GPU is visible).

Both take the unwrapped model and expose it as ``engine.model`` (rank 0 saves and evaluates it).
Every process of a run builds the same engine; methods marked collective must be called on all ranks.
"""

from __future__ import annotations

import math
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run, from torchrun's environment (a world of 1 without it)."""

    world: int = 1
    rank: int = 0
    local: int = 0  # the GPU index on this machine

    @classmethod
    def from_env(cls) -> "DistInfo":
        return cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local}" if torch.cuda.is_available() else "cpu")


def param_groups(model, tc) -> list[dict]:
    """AdamW groups of the trainable parameters: one per (lr multiplier, decayed or not).

    A parameter takes the multiplier of the last ``tc.lr_scale`` prefix its name starts with (1.0
    when none); matrices other than embeddings get ``tc.weight_decay``, the rest none. Each group
    carries its multiplier as ``"lr_scale"`` so that ``Engine.set_lr`` can rescale it every step.
    """
    groups: dict = {}
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


def build_optimizer(model, tc) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, tc), lr=tc.lr, betas=tuple(tc.betas))


class Engine(ABC):
    """The interface the loop sees. ``model``: the unwrapped model; ``device``: where batches go."""

    def __init__(self, model, tc, info: DistInfo):
        self.model, self.tc, self.info, self.device = model, tc, info, info.device
        self._started_group = False  # True when this engine started the process group (close ends it)

    @property
    @abstractmethod
    def param_groups(self) -> list[dict]:
        """The optimizer's groups, each with its ``"lr_scale"``."""

    def set_lr(self, factor: float) -> None:
        """Every group's learning rate becomes ``tc.lr * group["lr_scale"] * factor``."""
        for g in self.param_groups:
            g["lr"] = self.tc.lr * g["lr_scale"] * factor

    def forward(self, batch: dict) -> dict:
        """The model's losses on ``batch`` (``{"loss": scalar, part: scalar, ...}``), under bf16
        autocast when ``tc.bf16``."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tc.bf16):
            return self._call(batch)

    @abstractmethod
    def _call(self, batch: dict) -> dict:
        """The wrapped model's forward."""

    @abstractmethod
    def step(self, loss: torch.Tensor) -> float:
        """Backward, clip at ``tc.grad_clip`` (0: no clipping), optimizer step, zero the gradients.
        Returns the gradient norm before clipping (over all ranks)."""

    @abstractmethod
    def save_state(self, out: Path, step: int) -> tuple[dict, dict]:
        """Collective. Writes what lives outside the checkpoint folder; returns (files for rank 0 to put
        in ``checkpoint-STEP``: name -> object, entries for its ``trainer_state.json``)."""

    @abstractmethod
    def load_state(self, folder: Path, state: dict, out: Path) -> None:
        """Collective. Restores the optimizer saved with checkpoint ``folder`` (``state``: its trainer_state)."""

    def barrier(self) -> None:
        if self.info.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Ends the process group this engine started (a later run in this process starts a fresh one)."""
        if self._started_group and dist.is_initialized():
            dist.destroy_process_group()


class TorchEngine(Engine):
    """Plain torch: one process, or DDP when ``info.world > 1``."""

    def __init__(self, model, tc, info: DistInfo):
        super().__init__(model, tc, info)
        if info.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self._started_group = True
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        model.to(self.device)
        self.optimizer = build_optimizer(model, tc)
        self._module = model
        if info.world > 1:
            self._module = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[info.local] if self.device.type == "cuda" else None, find_unused_parameters=True)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def _call(self, batch):
        return self._module(batch)

    def step(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.tc.grad_clip if self.tc.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        return float(norm)

    def save_state(self, out, step):
        return {"optimizer.pt": self.optimizer.state_dict()}, {}

    def load_state(self, folder, state, out):
        path = Path(folder) / "optimizer.pt"
        if not path.is_file():
            print(f"note: {folder} has no optimizer.pt (written by a DeepSpeed run?); the optimizer starts fresh")
            return
        self.optimizer.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


class DeepSpeedEngine(Engine):
    """DeepSpeed's engine on the JSON config ``tc.deepspeed`` (checked by ``check_deepspeed_config``).

    The engine owns backward, gradient clipping (the JSON's ``gradient_clipping``), the step and the
    ZeRO-sharded optimizer state, which every rank saves under ``output_dir/deepspeed/step<STEP>``.
    """

    def __init__(self, model, tc, info: DistInfo):
        from perception.training.deepspeed_config import check_deepspeed_config

        super().__init__(model, tc, info)
        config = check_deepspeed_config(tc.deepspeed, tc)
        stage = (config.get("zero_optimization") or {}).get("stage", 0)
        if stage == 3:
            raise ValueError(f"DeepSpeed config {tc.deepspeed}: ZeRO stage 3 is not supported by this trainer "
                             "(its gradient hand-off reads whole parameters, which stage 3 partitions); use stage 2")
        deepspeed = import_deepspeed()
        if info.world == 1:
            _single_process_env()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._started_group = not dist.is_initialized()
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        model.to(self.device)
        self._engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=build_optimizer(model, tc), config=config)
        self._trainable = [p for p in model.parameters() if p.requires_grad]

    @property
    def param_groups(self) -> list[dict]:
        return self._engine.optimizer.param_groups

    def _call(self, batch):
        # The module itself, not ``self._engine(batch)``: the engine's forward hooks its output so that
        # a backward through it starts the engine's reduction, and ``step`` first takes a plain
        # ``torch.autograd.grad`` through that output (which would start the reduction early).
        # For ZeRO stages 0-2 the engine's forward adds nothing else we use.
        clear = getattr(self._engine.optimizer, "clear_backward_seen_flag", None)  # ZeRO optimizers only
        if clear is not None:
            clear()
        return self._engine.module(batch)

    def step(self, loss):
        self._engine.backward(self._same_graph_on_every_rank(loss))
        self._engine.step()  # clips, steps, zeroes the gradients
        norm = self._engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def _same_graph_on_every_rank(self, loss: torch.Tensor) -> torch.Tensor:
        """A loss with the gradients of ``loss`` whose backward graph is the same on every rank.

        ZeRO-2 reduces each gradient from a hook as it arrives and pairs the ranks' reductions by that
        order. The order follows the backward graph, which differs between ranks whose batches use
        different heads (no region, no ``<loc>``): gloo then fails on mismatched sizes, or, worse, adds
        up different parameters' gradients (measured: heads off by 2 lr after one step). So the
        gradients are computed first and handed to the engine through ``sum(p * g)``, built in
        parameter order; a parameter ``loss`` did not reach gets a zero gradient.
        """
        grads = torch.autograd.grad(loss, self._trainable, allow_unused=True)
        return torch.stack([(p * g).sum() if g is not None else p.sum() * 0.0
                            for p, g in zip(self._trainable, grads)]).sum()

    def save_state(self, out, step):
        tag = f"step{step:06d}"
        self._engine.save_checkpoint(str(Path(out) / "deepspeed"), tag=tag, exclude_frozen_parameters=True)
        return {}, {"deepspeed_tag": tag}

    def load_state(self, folder, state, out):
        tag = state.get("deepspeed_tag")
        if not tag or not (Path(out) / "deepspeed" / tag).is_dir():
            print(f"note: {folder} has no DeepSpeed optimizer shards; the optimizer starts fresh")
            return
        self._engine.load_checkpoint(str(Path(out) / "deepspeed"), tag=tag, load_module_strict=False)


def build_engine(model, tc, info: DistInfo) -> Engine:
    """DeepSpeed when ``tc.deepspeed`` names a JSON config, else plain torch (DDP when world > 1)."""
    return (DeepSpeedEngine if tc.deepspeed else TorchEngine)(model, tc, info)


def import_deepspeed():
    """``import deepspeed``, on CPU with ``DS_ACCELERATOR=cpu`` (else DeepSpeed looks for a GPU)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError(
            "the training config sets `deepspeed` but DeepSpeed is not installed: pip install deepspeed==0.19.8 "
            "(docs/TRAINING.md), or drop --deepspeed to train with plain torch / DDP") from e
    return deepspeed


def _single_process_env() -> None:
    """A world of 1 outside torchrun: the variables DeepSpeed reads (else it looks for mpi4py)."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
