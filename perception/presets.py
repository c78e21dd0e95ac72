"""The one registry of model presets. ``get_preset(name)`` returns a fresh PerceptionConfig.

- ``tiny``: CPU-sized, trained from scratch on ShapesRef and shipped in checkpoints/tiny.
  Conv stem (160 px, stride 2..16) -> 100 image tokens -> Llama (h256, 4 layers); mask from the
  dot-product head (SAM's last stage) over stride-2 per-pixel features; the reported box is the
  box of the mask blob around its peak (MLPs on one vector do not learn to localise from scratch
  in a CPU budget: docs/RESULTS.md). The MLP box head is still trained. Region encoder on an
  ROI crop; dense attribute targets on the image tokens (ShapesRef's size/colour/shape words).
- ``tiny-objects``: the tiny recipe plus question-aware object tokens (issue 14): proposals become
  one ``<obj>`` token each, after the user's text of every turn, and a pointer from each ``<loc>``
  picks one. Why: the shipped tiny model finds objects but often picks the wrong one, and grid
  tokens before the question cannot know what is asked (../shared/TRAINING-NOTES.md).
- ``tiny-llava``: LlavaForConditionalGeneration built from a tiny config (tests; same code as 7B).
- ``llava-1.5-7b`` / ``llava-1.5-13b`` (+ SAM ViT-H, or ``-sam-vit-b``/``-sam-vit-l``): GPU presets;
  LoRA r=16 on the LM's q/v, the paper's MLP box head, segment-anything's MaskDecoder.
- ``tiny-qwen2vl``: Qwen2VLForConditionalGeneration built from a tiny config (tests: a second family
  behind the same adapter interface). ``qwen2-vl-2b``: Qwen/Qwen2-VL-2B-Instruct + SAM ViT-H, LoRA.
"""

from __future__ import annotations

from perception.config import (
    BackboneConfig,
    BoxHeadConfig,
    LoraSettings,
    MaskHeadConfig,
    ObjectTokensConfig,
    PerceptionConfig,
    TokenAuxConfig,
)


def _tiny() -> PerceptionConfig:
    """The config defaults are this recipe; the preset adds ShapesRef's attribute words."""
    return PerceptionConfig(preset="tiny", token_aux=TokenAuxConfig(attributes=_shapesref_attributes()))


def _tiny_objects() -> PerceptionConfig:
    """The tiny recipe with object tokens on (``objects.enabled``; perception/objects.py).

    Why: of the shipped tiny model's misses, 79% put a good box on a *different* object, and
    three rounds of tuning the grid-token design moved one-object Acc@0.5 only from 0.71 to 0.77
    (issue 14). Choosing among one token per object, placed after the question so that each token
    already knows whether it matches, learned A/S/R selection at 1.00/0.94/0.98 with the region
    encoder's real embeddings and ground-truth proposals in a stand-alone experiment
    (../shared/TRAINING-NOTES.md). The mask and box heads still decode every ``<loc>`` state and
    are still trained (the paper's design); the pointer picks which proposal is reported.
    With the objects carried by object tokens the grid is context only: the LM sees 5x5 pooled
    grid tokens instead of 10x10, which makes a training step 20% cheaper (configs/tiny_shapesref_v2.yaml).
    Real presets keep the paper's path: object tokens are off there by default.
    """
    cfg = _tiny()
    cfg.preset = "tiny-objects"
    cfg.objects = ObjectTokensConfig(enabled=True)
    cfg.backbone.stem.token_grid = 5  # 25 grid tokens: the objects travel as object tokens (20% faster steps)
    # Half the training images get their object tokens from the model's own proposals (inference
    # only ever sees those: with ground-truth masks only, 1,000-scene Acc@0.5 was 0.78 against 0.94
    # with oracle proposals), and every object token learns whether it is what the turn asks for,
    # so "there is none" can be read from the tokens (docs/RESULTS.md, issue 14).
    cfg.objects.own_proposals = 0.5
    # The centre heatmap sees 15 x 15 pooled feature pixels (120 image pixels): on the frozen stage-3
    # features a 3 x 3 head stalled (focal loss 1.18 after 200 steps, recall 0.32 at step 600);
    # this one reached 0.35 (perception/heads/proposals.py), for 0.1 s more per step.
    cfg.objects.proposal_dilations = [1, 2, 4]
    cfg.objects.proposal_pool = 2
    cfg.loss.match = 1.0
    return cfg


# The paper's path, which every preset built on a pretrained vision LLM keeps: the MLP box head's
# box, no <loc> feedback, no exclusive decoding (the tiny recipe's additions, docs/RESULTS.md).
_PAPER = dict(loc_feedback=False)


def _paper_mask_head(**kw) -> MaskHeadConfig:
    return MaskHeadConfig(exclusive=False, **kw)


def _shapesref_attributes() -> list:
    from perception.data.shapesref import COLORS, SHAPES, SIZES

    return [list(SIZES), list(COLORS), list(SHAPES)]


def _tiny_llava() -> PerceptionConfig:
    llava = {
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        "text_config": {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 512,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
    }
    return PerceptionConfig(
        preset="tiny-llava",
        backbone=BackboneConfig(
            kind="llava",
            llava_config=llava,
            image_size=32,
            resize_mode="pad",
            pixel_mean=[0.48145466, 0.4578275, 0.40821073],
            pixel_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        mask_head=_paper_mask_head(kind="sam", dim=32, sam_variant=None),
        box_head=BoxHeadConfig(hidden=64, source="head"),
        lora=LoraSettings(enabled=True, r=4, alpha=8),
        **_PAPER,
    )


_SAM_EMBED = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}


def _llava(size: str, sam: str) -> PerceptionConfig:
    return PerceptionConfig(
        preset=f"llava-1.5-{size}" + ("" if sam == "vit_h" else f"-sam-{sam.replace('_', '-')}"),
        backbone=BackboneConfig(
            kind="llava",
            name_or_path=f"llava-hf/llava-1.5-{size}-hf",
            image_size=336,
            resize_mode="pad",
            pixel_mean=[0.48145466, 0.4578275, 0.40821073],
            pixel_std=[0.26862954, 0.26130258, 0.27577711],
            dtype="bfloat16",
            gradient_checkpointing=True,
        ),
        mask_head=_paper_mask_head(
            kind="sam", dim=256, sam_variant=sam, sam_checkpoint=f"checkpoints/sam_{sam}.pth"
        ),
        box_head=BoxHeadConfig(hidden=4096 if size == "7b" else 5120, source="head"),
        lora=LoraSettings(enabled=True, r=16, alpha=32, dropout=0.05),
        **_PAPER,
    )


_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # Qwen2-VL's image processor uses OpenAI CLIP statistics
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _tiny_qwen2vl() -> PerceptionConfig:
    qwen = {
        "vision_config": {  # 56 px / patch 7 = 8 x 8 patches, merged 2 x 2 -> 4 x 4 = 16 image tokens
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,  # merger output = the LM width
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 7,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},  # head_dim 16 -> 8 freqs
            "bos_token_id": 1,  # the tiny BPE's <s> and </s>
            "eos_token_id": 2,
        },
    }
    return PerceptionConfig(
        preset="tiny-qwen2vl",
        backbone=BackboneConfig(
            kind="qwen2vl", qwen_config=qwen, image_size=56, resize_mode="pad", pixel_mean=_CLIP_MEAN, pixel_std=_CLIP_STD
        ),
        mask_head=_paper_mask_head(kind="sam", dim=32, sam_variant=None),
        box_head=BoxHeadConfig(hidden=64, source="head"),
        lora=LoraSettings(enabled=True, r=4, alpha=8),
        **_PAPER,
    )


def _qwen2vl_2b() -> PerceptionConfig:
    return PerceptionConfig(
        preset="qwen2-vl-2b",
        backbone=BackboneConfig(
            kind="qwen2vl",
            name_or_path="Qwen/Qwen2-VL-2B-Instruct",
            image_size=448,  # multiple of 28: 16 x 16 = 256 image tokens
            resize_mode="pad",
            pixel_mean=_CLIP_MEAN,
            pixel_std=_CLIP_STD,
            dtype="bfloat16",
            gradient_checkpointing=True,
        ),
        mask_head=_paper_mask_head(kind="sam", dim=256, sam_variant="vit_h", sam_checkpoint="checkpoints/sam_vit_h.pth"),
        box_head=BoxHeadConfig(hidden=1536, source="head"),
        lora=LoraSettings(enabled=True, r=16, alpha=32, dropout=0.05),
        **_PAPER,
    )


PRESETS = {
    "tiny": _tiny,
    "tiny-objects": _tiny_objects,
    "tiny-llava": _tiny_llava,
    "llava-1.5-7b": lambda: _llava("7b", "vit_h"),
    "llava-1.5-13b": lambda: _llava("13b", "vit_h"),
    "llava-1.5-7b-sam-vit-b": lambda: _llava("7b", "vit_b"),
    "llava-1.5-7b-sam-vit-l": lambda: _llava("7b", "vit_l"),
    "llava-1.5-13b-sam-vit-b": lambda: _llava("13b", "vit_b"),
    "llava-1.5-13b-sam-vit-l": lambda: _llava("13b", "vit_l"),
    "tiny-qwen2vl": _tiny_qwen2vl,
    "qwen2-vl-2b": _qwen2vl_2b,
}


def get_preset(name: str) -> PerceptionConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
