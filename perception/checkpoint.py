"""save_pretrained / from_pretrained for PerceptionModel: one folder, safetensors only.

Folder layout:
  config.json                         PerceptionConfig
  tokenizer.json, tokenizer_config.json, special_tokens_map.json
  model-0000k-of-0000n.safetensors    full weights, sharded under 9 MB per file (Hub plain-file limit 10 MB)
  model.safetensors.index.json        tensor name -> shard
  -- or, for LoRA presets on a pretrained backbone --
  adapter_config.json, adapter_model.safetensors   (peft format, language-model LoRA)
  heads.safetensors (+ shards)        everything trainable that is not LoRA: heads, region encoder, embeddings

Saving is atomic: everything is written to a temporary sibling folder, then renamed into place,
so a crash never leaves a half-written checkpoint. Loading never unpickles: safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from perception.config import PerceptionConfig

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
HEADS_INDEX_NAME = "heads.safetensors.index.json"
MAX_SHARD_BYTES = 9 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint folder is missing, corrupt, truncated or does not match the model."""


def atomic_dir(final: str | os.PathLike):
    """Context manager yielding a temp folder that replaces ``final`` on success."""
    return _AtomicDir(Path(final))


class _AtomicDir:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def save_sharded(state: dict, folder: Path, prefix: str, index_name: str) -> None:
    """Write ``state`` as ``{prefix}-0000k-of-0000n.safetensors`` shards plus an index JSON."""
    shards, cur, size = [], {}, 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > MAX_SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = t.detach().contiguous().cpu()
        size += nbytes
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    (folder / index_name).write_text(json.dumps({"weight_map": weight_map}, indent=1))


def load_sharded(folder: Path, index_name: str) -> dict:
    index_path = folder / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except FileNotFoundError:
        raise CheckpointError(f"{index_path} is missing: not a complete checkpoint folder") from None
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index_path} is not a valid shard index: {e}") from None
    state = {}
    for fname in sorted(set(weight_map.values())):
        path = folder / fname
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {index_name})")
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError, Exception) as e:
            raise CheckpointError(f"{path} is corrupt or truncated: {e}") from None
    missing = set(weight_map) - set(state)
    if missing:
        raise CheckpointError(f"{folder}: tensors listed in {index_name} but absent from their shards: {sorted(missing)[:5]}")
    return state


def save_pretrained(model, folder: str | os.PathLike, push_to_hub: str | None = None) -> Path:
    """Write ``model`` (a PerceptionModel) to ``folder`` atomically; optionally push to a Hub repo id."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        write_model(model, tmp)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=push_to_hub)
    return folder


def write_model(model, folder: Path) -> None:
    """Write config, tokenizer and weights into an existing (temporary) folder."""
    (folder / CONFIG_NAME).write_text(model.config.to_json())
    model.tokenizer.save_pretrained(str(folder))
    if uses_adapter_format(model):
        from perception.lora import save_lora

        save_lora(model, folder)
        save_sharded(trainable_non_lora_state(model), folder, "heads", HEADS_INDEX_NAME)
    else:
        save_sharded(full_state(model), folder, "model", INDEX_NAME)


def uses_adapter_format(model) -> bool:
    """LoRA on a backbone that can be re-fetched (hub id / folder): save only what training changed.
    A backbone built from a config (random weights) is saved in full."""
    b = model.config.backbone
    return bool(getattr(model, "lora_applied", False) and b.llava_config is None and b.name_or_path)


def full_state(model) -> dict:
    """All parameters and persistent buffers, deduplicated (tied tensors saved once)."""
    state, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        state[name] = t
    return state


def trainable_non_lora_state(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}


def read_config(folder: Path) -> PerceptionConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {folder} is not a perception checkpoint folder")
    try:
        return PerceptionConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid PerceptionConfig: {e}") from None


def from_pretrained(folder: str | os.PathLike, device="cpu"):
    """Load a PerceptionModel from a checkpoint folder (see module docstring)."""
    from transformers import AutoTokenizer

    from perception.model import PerceptionModel

    folder = Path(folder)
    config = read_config(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise CheckpointError(f"{folder}: tokenizer files are missing or invalid: {e}") from None
    if (folder / INDEX_NAME).is_file():
        model = PerceptionModel(config, tokenizer, pretrained_backbone=False)
        state = load_sharded(folder, INDEX_NAME)
        if any("lora_" in k for k in state):
            from perception.lora import apply_lora

            apply_lora(model)
        _load_strict(model, state, folder / INDEX_NAME)
    else:
        model = PerceptionModel(config, tokenizer, pretrained_backbone=True)
        from perception.lora import apply_lora, load_lora

        apply_lora(model)
        load_lora(model, folder)
        state = load_sharded(folder, HEADS_INDEX_NAME)
        _load_strict(model, state, folder / HEADS_INDEX_NAME, partial=True)
    return model.to(device).eval()


def _load_strict(model, state, source, partial=False):
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: tensors the model does not have: {unexpected[:5]} (wrong preset or version?)")
    if not partial:
        # tied weights are stored once; everything else must be present
        missing = [k for k, v in expected.items() if k not in state and v.numel()]
        ptrs = {expected[k].data_ptr() for k in state}
        missing = [k for k in missing if expected[k].data_ptr() not in ptrs]
        if missing:
            raise CheckpointError(f"{source}: tensors missing from the checkpoint: {missing[:5]}")
    for k, v in state.items():
        if expected[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)} in the file but {tuple(expected[k].shape)} in the model")
    model.load_state_dict(state, strict=False)
