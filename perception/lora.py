"""LoRA on the language model only, through peft.

A plain ``["q_proj", "v_proj"]`` target list also matches the vision tower's and SAM's attention
projections, so targets are a regex anchored at the backbone's language-model prefix. New token
embeddings, the LM head, the heads and the region encoder stay fully trainable.
"""

from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import load_file, save_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def lora_target_regex(model) -> str:
    prefix = "backbone." + model.backbone.lm_prefix
    names = "|".join(re.escape(t) for t in model.config.lora.targets)
    return rf"^{re.escape(prefix)}\..*\.({names})$"


def _lora_config(model):
    from peft import LoraConfig

    s = model.config.lora
    return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=lora_target_regex(model), bias="none")


def apply_lora(model) -> None:
    """Inject LoRA into the LM's attention projections; freeze the rest of the backbone."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(_lora_config(model), model)
    model.lora_applied = True
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            p.requires_grad = "lora_" in name or _is_embedding(model, name)
        elif name.startswith("mask_head.sam.image_encoder."):  # SAM's encoder stays frozen (as in LISA)
            p.requires_grad = False
        else:  # heads and region encoder: fully trainable (peft froze them)
            p.requires_grad = True


def _is_embedding(model, name: str) -> bool:
    emb = model.backbone.get_input_embeddings()
    head = getattr(getattr(model.backbone, "model", None), "lm_head", None) or getattr(getattr(model.backbone, "llm", None), "lm_head", None)
    ids = {id(emb.weight)} | ({id(head.weight)} if head is not None else set())
    return id(dict(model.named_parameters())[name]) in ids


def lora_state(model) -> dict:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if "lora_" in n}


def save_lora(model, folder: Path) -> None:
    cfg = _lora_config(model)
    cfg.save_pretrained(str(folder))
    save_file(lora_state(model), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_lora(model, folder: Path) -> None:
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ValueError(f"{path} is missing: this LoRA checkpoint is incomplete")
    state = load_file(str(path))
    expected = set(lora_state(model))
    if set(state) != expected:
        raise ValueError(f"{path} does not match the model's LoRA layers: missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}")
    model.load_state_dict(state, strict=False)
