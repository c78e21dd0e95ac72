"""Image -> tensor preprocessing, usable without a model (data-loader workers, the pipeline)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from perception.geometry import ImageFrame

SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)


def to_tensor(square: Image.Image, mean, std, scale: float) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(square, dtype=np.float32) * scale).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def backbone_pixels(image: Image.Image, cfg) -> torch.Tensor:
    """RGB PIL image -> (3, S, S) normalised tensor in the model frame of BackboneConfig ``cfg``."""
    frame = ImageFrame(*image.size, cfg.image_size, cfg.resize_mode)
    return to_tensor(frame.image_to_model(image), cfg.pixel_mean, cfg.pixel_std, 1 / 255.0)


def sam_pixels(image: Image.Image, side: int) -> torch.Tensor:
    """RGB PIL image -> (3, side, side) SAM-normalised, longest side scaled to ``side``, padded bottom/right."""
    frame = ImageFrame(*image.size, side, "pad")
    return to_tensor(frame.image_to_model(image), SAM_MEAN, SAM_STD, 1.0)


def mask_side(config) -> int:
    """Side of the square mask logits the mask head outputs for PerceptionConfig ``config``."""
    m, b = config.mask_head, config.backbone
    if m.kind == "dot":
        return b.image_size // 2
    if m.sam_variant:
        return m.sam_image_size // 4
    llava = b.llava_config or {}
    vc = llava.get("vision_config", {})
    return 4 * (vc.get("image_size", b.image_size) // vc.get("patch_size", 14))
