"""transformers' LlavaForConditionalGeneration behind the Backbone interface.

Real checkpoints load by hub id or local folder (``cfg.name_or_path``, e.g.
``llava-hf/llava-1.5-7b-hf``); tiny ones are built from ``cfg.llava_config`` (tests). Images are
padded to a square (bottom/right) at ``cfg.image_size`` (336 for LLaVA-1.5) so the model frame is
the same as SAM's; image tokens are merged by our model at ``<image>`` positions.
"""

from __future__ import annotations

import os

import torch

from perception.backbone.base import Backbone, VisualFeatures
from perception.memory import log_memory_estimate

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def missing_weights_message(name: str) -> str:
    return (
        f"Cannot load backbone weights {name!r}: no local folder of that name and the Hugging Face Hub "
        f"is unreachable or offline. Download them on a connected machine with "
        f"`hf download {name} --local-dir checkpoints/{name.split('/')[-1]}` and pass "
        f"that folder (see checkpoints/README.md)."
    )


class LlavaBackbone(Backbone):
    lm_prefix = "model.model.language_model"

    def __init__(self, cfg, vocab_size: int, pretrained: bool = True):
        super().__init__(cfg)
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        if cfg.llava_config is not None:
            lc = dict(cfg.llava_config)
            text = dict(lc.pop("text_config"), vocab_size=vocab_size)
            self.model = LlavaForConditionalGeneration(LlavaConfig(text_config=text, **lc))
        elif cfg.name_or_path:
            log_memory_estimate(cfg)  # weights-only GiB to stderr before a multi-GB load
            kwargs = {"dtype": _DTYPES[cfg.dtype]}
            if cfg.device_map:
                kwargs["device_map"] = cfg.device_map
            if cfg.load_in:
                kwargs["quantization_config"] = _quantization(cfg.load_in)
            try:
                if pretrained:
                    self.model = LlavaForConditionalGeneration.from_pretrained(cfg.name_or_path, **kwargs)
                else:  # weights come from our own checkpoint: build the architecture only
                    conf = LlavaConfig.from_pretrained(cfg.name_or_path)
                    self.model = LlavaForConditionalGeneration(conf).to(_DTYPES[cfg.dtype])
            except OSError as e:
                if os.path.isdir(cfg.name_or_path):
                    raise
                raise OSError(missing_weights_message(cfg.name_or_path)) from e
        else:
            raise ValueError("llava backbone needs name_or_path (hub id / folder) or llava_config")
        self.resize_token_embeddings(vocab_size)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        text_cfg = self.model.config.text_config
        self.hidden_size = text_cfg.hidden_size
        vc = self.model.config.vision_config
        n = (vc.image_size // vc.patch_size) ** 2
        strategy = self.model.config.vision_feature_select_strategy
        self.num_image_tokens = n if strategy == "default" else n + 1
        self._grid = vc.image_size // vc.patch_size

    def set_image_token_id(self, token_id: int) -> None:
        self.model.config.image_token_id = token_id

    def encode_images(self, pixel_values):
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(self.model.dtype))
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        tokens = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
        g = self._grid
        grid = tokens[:, -g * g :].transpose(1, 2).reshape(tokens.shape[0], -1, g, g)
        return VisualFeatures(tokens, {"grid": grid})

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward_embeds(self, inputs_embeds, attention_mask=None, past_key_values=None, use_cache=False):
        out = self.model(
            inputs_embeds=inputs_embeds.to(self.model.dtype),
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=True,
        )
        return out.logits.float(), out.hidden_states[-1].float(), out.past_key_values

    def resize_token_embeddings(self, n: int) -> None:
        if n != self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(n)


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
