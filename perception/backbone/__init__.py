"""Backbone adapters: the only code that knows which vision LLM family carries the perception token.

Every adapter offers the same small surface (``Backbone``): preprocess an image into the square
model frame, encode images into LLM-ready tokens (+ dense maps for heads), embed token ids, run the
LM on input embeddings (returning logits, last-layer hidden states and the KV cache), and name the
LM's module prefix for LoRA. Heads, losses, data and UI never touch a family's classes.
"""

from perception.backbone.base import Backbone, VisualFeatures
from perception.backbone.llava import LlavaBackbone
from perception.backbone.qwen2vl import Qwen2VLBackbone
from perception.backbone.stem import StemLlamaBackbone


def build_backbone(cfg, vocab_size: int, pretrained: bool = True) -> Backbone:
    """Build the adapter named by ``cfg.kind`` (a BackboneConfig)."""
    if cfg.kind == "stem-llama":
        return StemLlamaBackbone(cfg, vocab_size)
    if cfg.kind == "llava":
        return LlavaBackbone(cfg, vocab_size, pretrained=pretrained)
    if cfg.kind == "qwen2vl":
        return Qwen2VLBackbone(cfg, vocab_size, pretrained=pretrained)
    raise ValueError(f"unknown backbone kind {cfg.kind!r}; known: 'stem-llama', 'llava', 'qwen2vl'")


__all__ = ["Backbone", "VisualFeatures", "LlavaBackbone", "Qwen2VLBackbone", "StemLlamaBackbone", "build_backbone"]
