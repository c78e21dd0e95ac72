"""Heads that read perception-token states (box, mask) and the region encoder that writes region embeddings."""

from perception.heads.box import BoxHead
from perception.heads.mask import DotMaskHead, MaskFeatures, SamMaskHead, build_mask_head
from perception.heads.region import RegionEncoder

__all__ = ["BoxHead", "DotMaskHead", "SamMaskHead", "MaskFeatures", "build_mask_head", "RegionEncoder"]
