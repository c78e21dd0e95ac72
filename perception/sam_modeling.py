"""Load ``segment_anything.modeling`` without running the package ``__init__``.

segment-anything's top-level ``__init__`` imports its predictor, which imports torchvision; the
torchvision on PyPI does not import beside the pinned CPU torch. Its ``modeling`` subpackage needs
only torch. This module registers a bare parent package (no code executed) and imports
``segment_anything.modeling`` under its real name, so the classes are the originals and SAM
checkpoints load into them with strict key matching.

If ``segment_anything`` was already imported normally (torchvision present), that one is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _load():
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError(
                "segment-anything is not installed: pip install segment-anything"
            )
        parent = types.ModuleType("segment_anything")
        parent.__path__ = list(spec.submodule_search_locations)
        parent.__spec__ = spec
        parent.__file__ = spec.origin
        sys.modules["segment_anything"] = parent
    return importlib.import_module("segment_anything.modeling")


modeling = _load()
MaskDecoder = modeling.MaskDecoder
PromptEncoder = modeling.PromptEncoder
TwoWayTransformer = modeling.TwoWayTransformer
ImageEncoderViT = modeling.ImageEncoderViT
Sam = modeling.Sam
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom  # noqa: E402
from segment_anything.modeling.common import LayerNorm2d  # noqa: E402

__all__ = [
    "MaskDecoder",
    "PromptEncoder",
    "TwoWayTransformer",
    "ImageEncoderViT",
    "Sam",
    "PositionEmbeddingRandom",
    "LayerNorm2d",
]
