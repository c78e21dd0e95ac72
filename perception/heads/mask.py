"""Mask heads: perception-token state (or a click) -> mask logits in the normalised model frame.

``DotMaskHead`` (tiny preset): the last stage of SAM's mask decoder without its transformer stack:
a query vector dotted with per-pixel features (an FPN over the backbone's stride 2..16 maps plus
SAM's random-Fourier position encoding), optionally refined by cross-attention over stride-8
features. Output (K, S/2, S/2) logits. Trains from scratch where the full decoder stalls.

``SamMaskHead`` (real presets): segment-anything's own ``PromptEncoder``/``MaskDecoder``/
``TwoWayTransformer`` (and ``ImageEncoderViT`` when ``sam_variant`` is set), held in
``self.sam`` with SAM's key names so official checkpoints load with strict key matching. The
perception-token state is projected to one sparse prompt token; a click is a SAM point prompt.
Output (K, 4e, 4e) low-res logits (256 x 256 for SAM at 1024 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from perception.processing import sam_pixels
from perception.sam_modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PositionEmbeddingRandom,
    PromptEncoder,
    TwoWayTransformer,
)


@dataclass
class MaskFeatures:
    """Per-image features the mask head decodes against (computed once per image, cached).

    pixels: (B, C, h, w) per-pixel features in the model frame (also pooled by the region encoder).
    extra:  head-specific tensors (e.g. stride-8 tokens for refinement).
    """

    pixels: torch.Tensor
    extra: dict = field(default_factory=dict)

    def select(self, index) -> "MaskFeatures":
        return MaskFeatures(self.pixels[index], {k: v[index] for k, v in self.extra.items()})


def _mlp(a, b, c):
    return nn.Sequential(nn.Linear(a, b), nn.GELU(), nn.Linear(b, c))


class DotMaskHead(nn.Module):
    needs_pixels = False

    def __init__(self, cfg, lm_dim: int, map_channels: dict):
        super().__init__()
        d = cfg.dim
        self.dim = d
        self.lateral = nn.ModuleDict({k: nn.Conv2d(c, d, 1) for k, c in map_channels.items()})
        self.order = sorted(map_channels, key=lambda k: -int(k[1:]))  # coarse -> fine: s16, s8, s4, s2
        self.smooth4 = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.GroupNorm(8, d), nn.GELU())
        self.pe = PositionEmbeddingRandom(d // 2)
        self.pixel_proj = nn.Sequential(nn.Conv2d(2 * d, d, 1), nn.GELU(), nn.Conv2d(d, d, 1))
        self.query_proj = _mlp(lm_dim, lm_dim, d)
        self.point_proj = _mlp(2 * d, 2 * d, d)
        self.refine = nn.ModuleList(_RefineLayer(d) for _ in range(cfg.refine_layers))
        self.bias = nn.Parameter(torch.zeros(1))

    def features(self, vis, mask_pixel_values=None) -> MaskFeatures:
        maps = vis.maps
        x = None
        for k in self.order:
            lat = self.lateral[k](maps[k])
            x = lat if x is None else lat + F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            if k == "s8":
                p8 = x
            if k == "s4":
                x = self.smooth4(x)
        b, _, h, w = x.shape
        pe = self.pe((h, w)).unsqueeze(0).expand(b, -1, -1, -1).to(x.dtype)
        pixels = self.pixel_proj(torch.cat([x, pe], 1))
        pe8 = self.pe(p8.shape[-2:]).unsqueeze(0).to(x.dtype)
        tokens8 = (p8 + pe8).flatten(2).transpose(1, 2)  # (B, h8*w8, d)
        return MaskFeatures(pixels, {"tokens8": tokens8})

    def query_from_states(self, states: torch.Tensor) -> torch.Tensor:
        """(K, D_lm) -> (K, d)."""
        return self.query_proj(states.float())

    def query_from_points(self, feats: MaskFeatures, points: torch.Tensor, bidx: torch.Tensor) -> torch.Tensor:
        """points (K, 2) normalised model-frame (x, y) -> (K, d) queries."""
        pix = feats.pixels[bidx]
        grid = (points * 2 - 1).view(-1, 1, 1, 2).to(pix.dtype)
        f = F.grid_sample(pix, grid, align_corners=False).flatten(1)  # (K, d)
        pe = self.pe.forward_with_coords(points.view(-1, 1, 2).float(), (1, 1)).flatten(1).to(f.dtype)
        return self.point_proj(torch.cat([f, pe], 1))

    def decode(self, feats: MaskFeatures, queries: torch.Tensor, bidx: torch.Tensor) -> torch.Tensor:
        """(K, d) queries for images bidx (K,) -> (K, h, w) logits in the model frame."""
        if queries.shape[0] == 0:
            return feats.pixels.new_zeros((0, *feats.pixels.shape[-2:]))
        q = queries
        if len(self.refine):
            mem = feats.extra["tokens8"][bidx]
            for layer in self.refine:
                q = layer(q, mem)
        logits = torch.einsum("kc,kchw->khw", q, feats.pixels[bidx]) / math.sqrt(self.dim)
        return logits + self.bias

    def from_states(self, feats, states, bidx):
        return self.decode(feats, self.query_from_states(states), bidx)

    def from_points(self, feats, points, bidx):
        return self.decode(feats, self.query_from_points(feats, points, bidx), bidx)


class _RefineLayer(nn.Module):
    """Query cross-attends to image tokens (SAM's token-to-image attention), then an MLP."""

    def __init__(self, d, heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.mlp = _mlp(d, 2 * d, d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, q, mem):
        a, _ = self.attn(q[:, None], mem, mem, need_weights=False)
        q = self.norm1(q + a[:, 0])
        return self.norm2(q + self.mlp(q))


_SAM_VIT = {  # segment-anything's build_sam settings
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}


class SamMaskHead(nn.Module):
    def __init__(self, cfg, lm_dim: int, map_channels: dict):
        super().__init__()
        d = cfg.dim
        self.cfg = cfg
        parts = {}
        if cfg.sam_variant:
            v = dict(_SAM_VIT[cfg.sam_variant])
            if cfg.sam_encoder_depth:
                v["depth"] = cfg.sam_encoder_depth
                v["global_attn_indexes"] = [i for i in v["global_attn_indexes"] if i < cfg.sam_encoder_depth]
            if cfg.sam_encoder_dim:
                v["embed_dim"] = cfg.sam_encoder_dim
            img = cfg.sam_image_size
            self.embed_size = img // 16
            self.input_size = img
            parts["image_encoder"] = ImageEncoderViT(
                depth=v["depth"], embed_dim=v["embed_dim"], img_size=img, mlp_ratio=4,
                norm_layer=lambda n: nn.LayerNorm(n, eps=1e-6), num_heads=v["num_heads"], patch_size=16,
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=v["global_attn_indexes"],
                window_size=14, out_chans=d,
            )
            self.neck = None
        else:  # features from the backbone's grid through a small neck
            c = map_channels["grid"]
            self.neck = nn.Sequential(nn.Conv2d(c, d, 1), nn.GELU(), nn.Conv2d(d, d, 3, padding=1))
            self.embed_size = None
            self.input_size = None
        self.needs_pixels = cfg.sam_variant is not None
        self._prompt_args = dict(embed_dim=d, mask_in_chans=16)
        parts["prompt_encoder"] = None  # built lazily once the embedding size is known (see _ensure_prompt)
        parts["mask_decoder"] = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=d, mlp_dim=max(8 * d, 64), num_heads=8),
            transformer_dim=d, iou_head_depth=3, iou_head_hidden_dim=256 if d >= 256 else d,
        )
        e = self.embed_size or _grid_size(map_channels)
        parts["prompt_encoder"] = PromptEncoder(
            embed_dim=d, image_embedding_size=(e, e), input_image_size=(16 * e, 16 * e), mask_in_chans=16
        )
        self.sam = nn.ModuleDict(parts)
        self.text_proj = _mlp(lm_dim, lm_dim, d)  # LISA's text_hidden_fcs

    # --- SAM checkpoints ----------------------------------------------------------------------
    def load_sam_state_dict(self, state_dict: dict) -> None:
        """Load an official SAM state dict (image_encoder/prompt_encoder/mask_decoder) strictly."""
        self.sam.load_state_dict(state_dict, strict=True)

    def load_sam_checkpoint(self, path: str) -> None:
        """Load segment-anything's .pth with ``weights_only=True`` (no code runs on unpickling)."""
        import os

        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"SAM checkpoint {path!r} not found. Download sam_{self.cfg.sam_variant} from the "
                f"segment-anything release and put it there (checkpoints/README.md)."
            )
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated / not a checkpoint
            raise ValueError(f"SAM checkpoint {path!r} could not be read: {e}") from e
        try:
            self.load_sam_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"SAM checkpoint {path!r} does not match sam_variant={self.cfg.sam_variant!r}: {e}") from e

    # --- features -----------------------------------------------------------------------------
    def preprocess(self, image) -> torch.Tensor:
        """RGB PIL image -> (3, side, side) SAM-normalised, padded bottom/right (model frame)."""
        return sam_pixels(image, self.input_size)

    def features(self, vis, mask_pixel_values=None) -> MaskFeatures:
        if self.needs_pixels:
            if mask_pixel_values is None:
                raise ValueError("this SAM mask head needs mask_pixel_values (SAM-preprocessed images)")
            emb = self.sam["image_encoder"](mask_pixel_values)
        else:
            emb = self.neck(vis.maps["grid"].float())
        return MaskFeatures(emb)

    def _decode(self, feats, sparse, bidx):
        pe = self.sam["prompt_encoder"]
        out = feats.pixels.new_zeros((sparse.shape[0], *[4 * s for s in feats.pixels.shape[-2:]]))
        dense_pe = pe.get_dense_pe().to(feats.pixels.dtype)
        for b in bidx.unique().tolist():
            sel = (bidx == b).nonzero().flatten()
            sp = sparse[sel]
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(sel), -1, *feats.pixels.shape[-2:])
            masks, _ = self.sam["mask_decoder"](
                image_embeddings=feats.pixels[b : b + 1], image_pe=dense_pe,
                sparse_prompt_embeddings=sp, dense_prompt_embeddings=dense, multimask_output=False,
            )
            out[sel] = masks[:, 0].to(out.dtype)
        return out

    def from_states(self, feats, states, bidx):
        return self._decode(feats, self.text_proj(states.float())[:, None], bidx)

    def from_points(self, feats, points, bidx):
        pe = self.sam["prompt_encoder"]
        side = pe.input_image_size[0]
        coords = (points.float() * side).view(-1, 1, 2) - 0.5  # SAM adds 0.5 back (pixel centres)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
        sparse, _ = pe(points=(coords, labels), boxes=None, masks=None)
        return self._decode(feats, sparse, bidx)


def _grid_size(map_channels):
    return map_channels.get("_grid_size", 16)


def build_mask_head(cfg, lm_dim: int, map_channels: dict):
    if cfg.kind == "dot":
        return DotMaskHead(cfg, lm_dim, {k: v for k, v in map_channels.items() if not k.startswith("_")})
    if cfg.kind == "sam":
        return SamMaskHead(cfg, lm_dim, map_channels)
    raise ValueError(f"unknown mask head kind {cfg.kind!r}; known: 'dot', 'sam'")
