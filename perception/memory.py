"""Rough GPU-memory estimates for the real presets (per GPU, GiB = 2**30 bytes), before any download.

``estimate_memory(config, training, batch_size, seq_len)`` returns a dict of parts plus "total";
``format_estimate`` prints it; ``python -m perception.memory llava-1.5-7b --train --batch 8``.
Arithmetic (docs/TRAINING.md walks through it):

- weights: params x bytes (bf16 2, fp32 4; bitsandbytes 8-bit 1, 4-bit NF4 0.5 + one fp32 scale per
  64 weights; embeddings and the LM head stay in the load dtype). Our heads and SAM are fp32 in the
  plain trainer (they are built in fp32), bf16 under DeepSpeed (its bf16 mode casts the module).
- trainable parameters are what ``perception.lora.apply_lora`` leaves trainable: LoRA, the input
  embeddings and LM head (new tokens), and every head -- including SAM's image encoder when the
  preset has one (``sam_encoder_trainable=False`` estimates freezing it, as LISA does).
  Plain trainer: grads + two AdamW states in the parameter's dtype. DeepSpeed (bf16, ZeRO stage s):
  2 bytes grads + 12 bytes fp32 master/m/v per parameter, divided by the world size from stage 2
  (grads) and stage 1 (optimizer) on -- the ZeRO paper's Psi * (2 + (2 + 12) / N).
- activations (Korthikanti et al. 2022, "Reducing Activation Recomputation", flash/SDPA attention so
  no s^2 term): 34 * s * b * h bytes per layer; with gradient checkpointing only each layer's input
  (2 * s * b * h) plus one layer being recomputed. Logits: b * s * V * 14 bytes (bf16 logits, fp32
  copy, log-softmax and its gradient). SAM's ViT (no checkpointing): 34 * s * b * h per block plus
  attention scores 5 * heads * s^2 * b on the global blocks, when trained; frozen, only the transient
  scores of one global block (3 * heads * s^2 * b * 2 bytes). 1 GiB for the CUDA context and
  allocator slack. Expect +-20%: this is planning arithmetic, not a measurement.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class KnownBackbone:
    """Published sizes of a pretrained vision LLM (parameter counts in units, not billions)."""

    lm_params: float  # language model incl. input embeddings and LM head
    vision_params: float  # vision tower
    projector_params: float  # vision -> LM projector (0 when counted in the tower)
    hidden: int  # LM width h
    layers: int  # LM decoder layers L
    intermediate: int  # LM MLP width
    vocab: int  # LM vocabulary (before our special tokens)
    kv_dim: int  # width of k_proj / v_proj outputs (= hidden without grouped-query attention)
    token_stride: int  # pixels per image token side (image tokens = (image_size / stride) ** 2)
    tied_embeddings: bool  # LM head shares the input embedding matrix


KNOWN_BACKBONES = {
    # LLaVA-1.5-7B = Vicuna-7B-v1.5 (Llama-2-7B: 6,738,415,616 params, Touvron et al. 2023 / the
    # meta-llama/Llama-2-7b-hf model card "7B") + CLIP ViT-L/14-336 vision tower (303.5M,
    # openai/clip-vit-large-patch14-336) + 2-layer MLP projector 1024->4096->4096 (20,979,712).
    "llava-1.5-7b-hf": KnownBackbone(6.74e9, 303.5e6, 20.98e6, 4096, 32, 11008, 32064, 4096, 14, False),
    # LLaVA-1.5-13B = Vicuna-13B-v1.5 (Llama-2-13B: 13,015,864,320) + the same tower + projector
    # 1024->5120->5120 (31,467,520).
    "llava-1.5-13b-hf": KnownBackbone(13.02e9, 303.5e6, 31.47e6, 5120, 40, 13824, 32064, 5120, 14, False),
    # Qwen2-VL-2B-Instruct: Qwen2-1.5B LM (1,543,714,304, tied embeddings, 2 KV heads x 128) + 675M
    # ViT incl. the 2x2 patch merger (Wang et al. 2024, Qwen2-VL report, Table 1); 2.21B in total.
    "qwen2-vl-2b-instruct": KnownBackbone(1.54e9, 675e6, 0.0, 1536, 28, 8960, 151936, 256, 28, True),
}

# segment-anything image encoders, counted from build_sam's settings (perception.heads.mask._SAM_VIT);
# the SAM paper (Kirillov et al. 2023) and its README quote the whole models as 91M / 308M / 636M.
SAM_ENCODER_PARAMS = {"vit_b": 89.67e6, "vit_l": 308.28e6, "vit_h": 637.03e6}
SAM_DECODER_PARAMS = 4.06e6  # prompt encoder + mask decoder (transformer_dim 256)

_LM_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
_QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5 + 4 / 64}


def known_backbone(backbone_cfg) -> KnownBackbone | None:
    """The KNOWN_BACKBONES entry for a BackboneConfig's hub id or local folder name, else None."""
    name = (backbone_cfg.name_or_path or "").rstrip("/").split("/")[-1].lower()
    return KNOWN_BACKBONES.get(name)


def _lora_params(k: KnownBackbone, lora) -> float:
    if not lora.enabled:
        return 0.0
    h, kv, m = k.hidden, k.kv_dim, k.intermediate
    per = {"q_proj": h + h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": h + h,
           "gate_proj": h + m, "up_proj": h + m, "down_proj": m + h}
    unknown = set(lora.targets) - set(per)
    if unknown:
        raise ValueError(f"no LoRA size rule for targets {sorted(unknown)}; known: {sorted(per)}")
    return float(k.layers * lora.r * sum(per[t] for t in lora.targets))


def _head_params(config, k: KnownBackbone) -> tuple[float, float]:
    """(heads without SAM's image encoder, SAM image encoder), counted on the meta device (no memory)."""
    import torch

    from perception.heads import BoxHead, RegionEncoder, build_mask_head

    D = k.hidden
    g = config.backbone.image_size // k.token_stride
    with torch.device("meta"):
        mods = [BoxHead(config.box_head, D), RegionEncoder(config.region, D, config.mask_head.dim)]
        if config.mask_head.kind == "sam":
            mods.append(build_mask_head(config.mask_head, D, {"grid": D, "_grid_size": g}))
    total = float(sum(p.numel() for m in mods for p in m.parameters()))
    sam = config.mask_head.sam_variant if config.mask_head.kind == "sam" else None
    built = encoder = 0.0
    if sam:
        built = float(sum(p.numel() for p in mods[-1].sam["image_encoder"].parameters()))
        custom = config.mask_head.sam_encoder_depth or config.mask_head.sam_encoder_dim
        encoder = built if custom else SAM_ENCODER_PARAMS[sam]  # the documented constant for real encoders
    return total - built, encoder


def param_counts(config) -> dict:
    """Parameter counts (units) of a real preset: lm, vision, sam_encoder, heads, lora, trainable."""
    k = _require_known(config.backbone)
    heads, sam = _head_params(config, k)
    lora = _lora_params(k, config.lora)
    emb = k.vocab * k.hidden * (1 if k.tied_embeddings else 2)
    trainable = lora + heads + sam + (emb if config.lora.enabled else k.lm_params)
    return {"lm": k.lm_params, "vision": k.vision_params + k.projector_params, "sam_encoder": sam,
            "heads": heads, "lora": lora, "trainable_embeddings": emb if config.lora.enabled else 0.0,
            "trainable": trainable}


def _require_known(backbone_cfg) -> KnownBackbone:
    k = known_backbone(backbone_cfg)
    if k is None:
        raise ValueError(f"no published sizes for backbone {backbone_cfg.name_or_path!r}; "
                         f"known: {sorted(KNOWN_BACKBONES)} (perception.memory.KNOWN_BACKBONES)")
    return k


def estimate_memory(config, training: bool, batch_size: int = 1, seq_len: int | None = None, *,
                    text_tokens: int = 128, gradient_checkpointing: bool | None = None,
                    world_size: int = 1, zero_stage: int | None = None,
                    sam_encoder_trainable: bool = True) -> dict:
    """Per-GPU memory in GiB, by part, for a PerceptionConfig (or a bare BackboneConfig: weights only).

    seq_len: tokens per sequence (default: image tokens + ``text_tokens``). gradient_checkpointing:
    default from the config. zero_stage: None = the plain trainer (torch AdamW, heads in fp32);
    0-3 = DeepSpeed bf16 with that ZeRO stage over ``world_size`` GPUs.
    """
    from perception.config import PerceptionConfig

    full = isinstance(config, PerceptionConfig)
    bcfg = config.backbone if full else config
    k = _require_known(bcfg)
    b = batch_size
    n_img = (bcfg.image_size // k.token_stride) ** 2
    s = seq_len or n_img + text_tokens
    ckpt = bcfg.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    ds = zero_stage is not None
    if ds and zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3; got {zero_stage}")
    w = _LM_BYTES[bcfg.dtype]
    emb = k.vocab * k.hidden * (1 if k.tied_embeddings else 2)
    lin = _QUANT_BYTES[bcfg.load_in] if bcfg.load_in else w
    out = {"llm_weights": ((k.lm_params - emb) * lin + emb * w) / GiB,
           "vision_tower": (k.vision_params + k.projector_params) * w / GiB}
    head_bytes = 2.0 if ds else 4.0
    if full:
        counts = param_counts(config)
        sam = config.mask_head.sam_variant if config.mask_head.kind == "sam" else None
        out["sam_encoder"] = counts["sam_encoder"] * head_bytes / GiB
        out["heads"] = counts["heads"] * head_bytes / GiB
        out["lora"] = counts["lora"] * w / GiB
    if training:
        if not full:
            raise ValueError("a training estimate needs the whole PerceptionConfig (heads, LoRA), not a BackboneConfig")
        if not config.lora.enabled:
            raise ValueError("estimates cover LoRA presets only (full fine-tuning of the LM is not a recipe here)")
        n_ws = counts["lora"] + counts["trainable_embeddings"]  # in the LM dtype
        n_heads = counts["heads"] + (counts["sam_encoder"] if sam_encoder_trainable else 0.0)
        if ds:
            n = n_ws + n_heads
            shard = lambda stage: world_size if zero_stage >= stage else 1  # noqa: E731
            out["gradients"] = n * 2 / shard(2) / GiB
            out["optimizer_states"] = n * 12 / shard(1) / GiB
        else:
            out["gradients"] = (n_ws * w + n_heads * 4) / GiB
            out["optimizer_states"] = 2 * (n_ws * w + n_heads * 4) / GiB
        h, L = k.hidden, k.layers
        per_layer = 34 * s * b * h
        out["activations"] = ((L * 2 * s * b * h + per_layer) if ckpt else L * per_layer) / GiB
        out["logits"] = b * s * k.vocab * 14 / GiB
        if sam:
            out["sam_activations"] = _sam_activations(config, b, sam_encoder_trainable) / GiB
    else:
        out["kv_cache"] = 2 * k.layers * s * b * k.kv_dim * w / GiB
        out["activations"] = 34 * s * b * k.hidden / GiB
        out["logits"] = b * s * k.vocab * 6 / GiB
        if full and sam:
            out["sam_activations"] = _sam_activations(config, b, False) / GiB
    out["overhead"] = 1.0
    out["total"] = sum(out.values())
    return {key: round(v, 3) for key, v in out.items()}


def _sam_activations(config, b: int, trainable: bool) -> float:
    """Bytes of SAM ViT activations for b images (bf16 compute)."""
    from perception.heads.mask import _SAM_VIT

    v = _SAM_VIT[config.mask_head.sam_variant]
    s = (config.mask_head.sam_image_size // 16) ** 2
    heads, n_global = v["num_heads"], len(v["global_attn_indexes"])
    if not trainable:
        return 3 * heads * s * s * b * 2
    windows = (-(-config.mask_head.sam_image_size // 16 // 14)) ** 2  # 14 x 14 windows, padded
    scores = 5 * heads * b * (n_global * s * s + (v["depth"] - n_global) * windows * 196**2)
    return 34 * s * b * v["embed_dim"] * v["depth"] + scores


def format_estimate(estimate: dict, title: str | None = None) -> str:
    """A small aligned table of an ``estimate_memory`` result."""
    lines = [title] if title else []
    for key, v in estimate.items():
        if key != "total":
            lines.append(f"  {key:<18} {v:8.2f} GiB")
    lines.append(f"  {'total':<18} {estimate['total']:8.2f} GiB")
    return "\n".join(lines)


def log_memory_estimate(backbone_cfg, file=None) -> None:
    """Print the weights-only estimate before loading a pretrained backbone (never raises)."""
    try:
        k = known_backbone(backbone_cfg)
        if k is None:
            return
        est = estimate_memory(backbone_cfg, training=False)
        quant = f", {backbone_cfg.load_in}" if backbone_cfg.load_in else ""
        print(f"perception: loading {backbone_cfg.name_or_path} ({backbone_cfg.dtype}{quant}): "
              f"LLM {est['llm_weights']:.1f} GiB + vision tower {est['vision_tower']:.1f} GiB of weights; "
              f"a whole preset incl. SAM and training: python -m perception.memory PRESET --train",
              file=file or sys.stderr)
    except Exception:  # an estimate must never stop a model from loading
        pass


def main(argv=None) -> int:
    from perception.presets import get_preset

    p = argparse.ArgumentParser(prog="python -m perception.memory", description="GPU memory estimate of a real preset")
    p.add_argument("preset")
    p.add_argument("--train", action="store_true", help="LoRA training (default: inference)")
    p.add_argument("--batch", type=int, default=1, help="sequences per GPU")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: image tokens + 128)")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--zero", type=int, default=None, help="DeepSpeed ZeRO stage (default: the plain trainer)")
    p.add_argument("--freeze-sam-encoder", action="store_true", help="estimate with SAM's image encoder frozen")
    p.add_argument("--load-in", choices=["8bit", "4bit"], default=None)
    a = p.parse_args(argv)
    cfg = get_preset(a.preset)
    cfg.backbone.load_in = a.load_in
    est = estimate_memory(cfg, a.train, a.batch, a.seq, world_size=a.gpus, zero_stage=a.zero,
                          sam_encoder_trainable=not a.freeze_sam_encoder)
    mode = "LoRA training" if a.train else "inference"
    print(format_estimate(est, f"{a.preset}: {mode}, batch {a.batch}/GPU, GiB per GPU (rough, +-20%)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
