"""Loading a transformers vision-LLM for any adapter: from a config dict (tests, toy sizes) or by
hub id / local folder (real checkpoints), with dtype, device_map and optional bitsandbytes."""

from __future__ import annotations

import os

import torch

from perception.backbone.base import Backbone
from perception.memory import log_memory_estimate

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def missing_weights_message(name: str) -> str:
    return (
        f"Cannot load backbone weights {name!r}: no local folder of that name and the Hugging Face Hub "
        f"is unreachable or offline. Download them on a connected machine with "
        f"`hf download {name} --local-dir checkpoints/{name.split('/')[-1]}` and pass "
        f"that folder (see checkpoints/README.md)."
    )



def load_hf_model(model_cls, config_cls, cfg, inline_field: str, vocab_size: int, pretrained: bool):
    """Build ``model_cls`` from the dict in ``cfg.<inline_field>`` (with a "text_config") or load
    ``cfg.name_or_path``; ``pretrained=False`` builds the architecture only (weights come from
    our own checkpoint). A missing download raises OSError naming what to fetch."""
    inline_config = getattr(cfg, inline_field)
    if inline_config is not None:
        c = dict(inline_config)
        text = dict(c.pop("text_config"), vocab_size=vocab_size)
        return model_cls(config_cls(text_config=text, **c))
    if not cfg.name_or_path:
        raise ValueError(f"{cfg.kind} backbone needs name_or_path (hub id / folder) or {inline_field}")
    log_memory_estimate(cfg)  # weights-only GiB to stderr before a multi-GB load
    kwargs = {"dtype": _DTYPES[cfg.dtype]}
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    if cfg.load_in:
        kwargs["quantization_config"] = _quantization(cfg.load_in)
    try:
        if pretrained:
            return model_cls.from_pretrained(cfg.name_or_path, **kwargs)
        return model_cls(config_cls.from_pretrained(cfg.name_or_path)).to(_DTYPES[cfg.dtype])
    except OSError as e:
        if os.path.isdir(cfg.name_or_path):
            raise
        raise OSError(missing_weights_message(cfg.name_or_path)) from e


def _quantization(kind: str):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ImportError(f"load_in={kind!r} needs bitsandbytes: pip install bitsandbytes") from e
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    raise ValueError(f"load_in must be '8bit' or '4bit', got {kind!r}")


class HFBackbone(Backbone):
    """Backbone methods shared by adapters around a transformers model held in ``self.model``."""

    lm_prefix = "model.model.language_model"  # transformers' *ForConditionalGeneration layout
    hf_classes = ("", "")  # the transformers model and config class names
    config_key = ""  # the BackboneConfig field that builds the model from a config dict instead

    def __init__(self, cfg, vocab_size: int, pretrained: bool = True):
        """``self.model`` from a checkpoint or ``cfg.<config_key>`` (``load_hf_model``), its embeddings
        resized to our vocabulary, gradient checkpointing as configured, ``hidden_size`` the LM's width."""
        super().__init__(cfg)
        import transformers

        model_cls, config_cls = (getattr(transformers, n) for n in self.hf_classes)
        self.model = load_hf_model(model_cls, config_cls, cfg, self.config_key, vocab_size, pretrained)
        self.resize_token_embeddings(vocab_size)
        if cfg.gradient_checkpointing:  # transformers 5 renamed gradient_checkpointing_enable (deprecated)
            enable = getattr(self.model, "activation_checkpointing_enable", None) or self.model.gradient_checkpointing_enable
            enable()
        self.hidden_size = self.model.config.text_config.hidden_size

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def extra_forward_kwargs(self, inputs_embeds, attention_mask, past_key_values) -> dict:
        """Model-specific forward arguments (e.g. Qwen2-VL's 3-D position ids); none by default."""
        return {}

    def forward_embeds(self, inputs_embeds, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None):
        extra = self.extra_forward_kwargs(inputs_embeds, attention_mask, past_key_values)
        if position_ids is not None:
            if "position_ids" in extra:
                raise ValueError(f"{type(self).__name__} computes its own position ids; it cannot take them as given")
            extra["position_ids"] = position_ids
        out = self.model(
            inputs_embeds=inputs_embeds.to(self.model.dtype),
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=True,
            **extra,
        )
        return out.logits.float(), out.hidden_states[-1].float(), out.past_key_values

    def resize_token_embeddings(self, n: int) -> None:
        if n != self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(n)
