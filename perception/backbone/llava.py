"""transformers' LlavaForConditionalGeneration behind the Backbone interface.

Real checkpoints load by hub id or local folder (``cfg.name_or_path``, e.g.
``llava-hf/llava-1.5-7b-hf``); tiny ones are built from ``cfg.llava_config`` (tests). Images are
padded to a square (bottom/right) at ``cfg.image_size`` (336 for LLaVA-1.5) so the model frame is
the same as SAM's; image tokens are merged by our model at ``<image>`` positions.
"""

from __future__ import annotations


import torch

from perception.backbone.base import VisualFeatures
from perception.backbone.hf import HFBackbone

class LlavaBackbone(HFBackbone):
    supports_padded_batch = True  # LlavaForConditionalGeneration passes position_ids to its Llama
    supports_attention_blocks = True  # its Llama takes a 4-D attention mask as given
    hf_classes = ("LlavaForConditionalGeneration", "LlavaConfig")
    config_key = "llava_config"

    def __init__(self, cfg, vocab_size: int, pretrained: bool = True):
        super().__init__(cfg, vocab_size, pretrained)
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
