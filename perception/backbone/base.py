"""The backbone adapter interface."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from PIL import Image

from perception.geometry import ImageFrame
from perception.processing import backbone_pixels


@dataclass
class VisualFeatures:
    """What a backbone extracts from a batch of images (model frame, B images).

    tokens: (B, N, D) LLM-ready image embeddings (N = ``num_image_tokens``).
    maps:   dense feature maps for heads, name -> (B, C, h, w) (e.g. "s2", "s4", "s8", "s16").
    """

    tokens: torch.Tensor
    maps: dict = field(default_factory=dict)

    def select(self, index) -> "VisualFeatures":
        return VisualFeatures(self.tokens[index], {k: v[index] for k, v in self.maps.items()})


class Backbone(nn.Module):
    """Adapter base. Subclasses set ``hidden_size``, ``num_image_tokens`` and ``lm_prefix``."""

    hidden_size: int
    num_image_tokens: int
    lm_prefix: str  # module-name prefix (relative to the backbone) of the language model, for LoRA
    supports_padded_batch = False  # forward_embeds honours position_ids as given (perception.generation.generate_batch)
    supports_attention_blocks = False  # forward_embeds takes a (B, 1, T, T) bool attention mask as given (objects.bidirectional)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def frame(self, width: int, height: int) -> ImageFrame:
        return ImageFrame(width, height, self.cfg.image_size, self.cfg.resize_mode)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> (3, S, S) normalised float tensor in the model frame."""
        return backbone_pixels(image, self.cfg)

    def encode_images(self, pixel_values: torch.Tensor) -> VisualFeatures:
        raise NotImplementedError

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.get_input_embeddings()(input_ids)

    def get_input_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    def forward_embeds(self, inputs_embeds, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None):
        """Run the LM. Returns (logits (B,T,V), last-layer hidden (B,T,D), past_key_values).

        attention_mask: (B, past + T), 0 on padding; position_ids: (B, T) rotary positions (default:
        past .. past + T - 1 for every row; left-padded batches pass them, see ``supports_padded_batch``)."""
        raise NotImplementedError

    def resize_token_embeddings(self, n: int) -> None:
        raise NotImplementedError
