"""transformers' Qwen2VLForConditionalGeneration behind the Backbone interface (a second family).

Real checkpoints load by hub id or local folder (``cfg.name_or_path``, e.g.
``Qwen/Qwen2-VL-2B-Instruct``); tiny ones are built from ``cfg.qwen_config`` (tests). Differences
from LLaVA that this adapter hides:

- Images: Qwen2-VL's vision tower takes *flattened patches* plus ``grid_thw``, not (B, 3, S, S).
  ``patchify`` turns our square model-frame tensor into exactly the layout of transformers'
  ``Qwen2VLImageProcessor`` (each image repeated over ``temporal_patch_size`` frames). S must be a
  multiple of ``patch_size * spatial_merge_size`` (28 for real Qwen2-VL: 448 px -> 16 x 16 = 256
  image tokens). Tokens come out in raster order of the merged grid, so ``maps["grid"]`` is a plain
  reshape.
- Positions: Qwen2-VL uses M-RoPE (3 position rows: temporal, height, width). Image tokens share
  one temporal index and take (row, col) offsets; text after the image resumes at start + g.
  ``forward_embeds`` only receives embeddings, so ``embed_tokens`` remembers the ids it embedded
  last and the prefill computes M-RoPE positions from them (``mrope_position_ids``, equal to
  transformers' ``get_rope_index`` for our one-image prompts); decoding steps continue from the
  cached per-row offset (``rope_deltas``), as transformers' own generate does. Called without
  matching ids, positions fall back to 1-D (what transformers does for text-only input).
"""

from __future__ import annotations


import torch

from perception.backbone.base import VisualFeatures
from perception.backbone.hf import HFBackbone


def patchify(pixel_values: torch.Tensor, patch: int, merge: int, temporal: int):
    """(B, 3, S, S) -> (flat patches (B*gh*gw, 3*temporal*patch*patch), grid_thw (B, 3) long).

    Same order as Qwen2VLImageProcessor: merge-blocks in raster order, the merge x merge patches of
    a block consecutive, each patch flattened as (channel, frame, y, x).
    """
    B, C, H, W = pixel_values.shape
    if H % (patch * merge) or W % (patch * merge):
        raise ValueError(f"image side {H}x{W} must be a multiple of patch_size*spatial_merge_size = {patch * merge}")
    gh, gw = H // patch, W // patch
    x = pixel_values.reshape(B, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, p, p)
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)  # frames after channel
    flat = x.reshape(B * gh * gw, C * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]] * B, dtype=torch.long, device=pixel_values.device)
    return flat, grid


def mrope_position_ids(input_ids: torch.Tensor, image_token_id: int, grid: int, attention_mask=None):
    """M-RoPE positions for sequences holding at most one g x g block of image tokens.

    input_ids: (B, T). Returns (position_ids (3, B, T) long, rope_deltas (B, 1) long) where
    rope_deltas = max position + 1 - number of real tokens (transformers' convention). Padded
    positions (attention_mask 0) get 0. Raises ValueError if an image block has the wrong length.
    """
    B, T = input_ids.shape
    dev = input_ids.device
    pos = torch.zeros(3, B, T, dtype=torch.long, device=dev)
    deltas = torch.zeros(B, 1, dtype=torch.long, device=dev)
    n_img = grid * grid
    rows = torch.arange(grid, device=dev).repeat_interleave(grid)
    cols = torch.arange(grid, device=dev).repeat(grid)
    for b in range(B):
        keep = attention_mask[b].bool() if attention_mask is not None else torch.ones(T, dtype=torch.bool, device=dev)
        ids = input_ids[b][keep]
        is_img = (ids == image_token_id).tolist()
        parts, cur, i = [], 0, 0
        while i < len(ids):
            j = i
            while j < len(ids) and is_img[j] == is_img[i]:
                j += 1
            if is_img[i]:
                if j - i != n_img:
                    raise ValueError(f"image block of {j - i} tokens; the vision tower gives {grid}x{grid} = {n_img}")
                parts.append(torch.stack([torch.full_like(rows, cur), rows + cur, cols + cur]))
                cur += grid
            else:
                parts.append(torch.arange(cur, cur + j - i, device=dev).expand(3, -1))
                cur += j - i
            i = j
        if parts:
            p = torch.cat(parts, 1)
            pos[:, b, keep] = p
            deltas[b, 0] = int(p.max()) + 1 - len(ids)
    return pos, deltas


class Qwen2VLBackbone(HFBackbone):
    hf_classes = ("Qwen2VLForConditionalGeneration", "Qwen2VLConfig")
    config_key = "qwen_config"

    def __init__(self, cfg, vocab_size: int, pretrained: bool = True):
        super().__init__(cfg, vocab_size, pretrained)
        self._patch, self._merge, self._temporal = (getattr(self.model.config.vision_config, k) for k in
                                                    ("patch_size", "spatial_merge_size", "temporal_patch_size"))
        if cfg.image_size % (self._patch * self._merge):
            raise ValueError(f"image_size {cfg.image_size} must be a multiple of {self._patch * self._merge} for Qwen2-VL")
        self._grid = cfg.image_size // (self._patch * self._merge)
        self.num_image_tokens = self._grid * self._grid
        self._image_token_id = None
        self._last_ids = None  # ids most recently embedded (for M-RoPE positions of the next prefill)
        self._rope_deltas = None  # (B, 1) offset of decoding positions, set by the prefill

    def set_image_token_id(self, token_id: int) -> None:
        self._image_token_id = token_id
        self.model.config.image_token_id = token_id

    def encode_images(self, pixel_values):
        """(B, 3, S, S) model-frame pixels -> tokens (B, g*g, D), maps {"grid": (B, D, g, g)}."""
        flat, grid_thw = patchify(pixel_values, self._patch, self._merge, self._temporal)
        out = self.model.model.get_image_features(pixel_values=flat.to(self.model.dtype), image_grid_thw=grid_thw)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        tokens = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats.view(len(grid_thw), -1, feats.shape[-1])
        g = self._grid
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, g, g)
        return VisualFeatures(tokens, {"grid": grid})

    def embed_tokens(self, input_ids):
        self._last_ids = input_ids.detach()
        return self.get_input_embeddings()(input_ids)

    def _positions(self, inputs_embeds, attention_mask, past_key_values):
        B, T = inputs_embeds.shape[:2]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        ids = self._last_ids
        if past == 0:
            if ids is None or tuple(ids.shape) != (B, T) or self._image_token_id is None:
                self._rope_deltas = None
                return None  # 1-D positions (transformers' text-only default)
            pos, self._rope_deltas = mrope_position_ids(ids.to(inputs_embeds.device), self._image_token_id, self._grid, attention_mask)
            return pos
        if self._rope_deltas is None or self._rope_deltas.shape[0] != B:
            return None
        p = torch.arange(past, past + T, device=inputs_embeds.device).view(1, 1, T) + self._rope_deltas.to(inputs_embeds.device)[None]
        return p.expand(3, B, T)

    def extra_forward_kwargs(self, inputs_embeds, attention_mask, past_key_values) -> dict:
        return {"position_ids": self._positions(inputs_embeds, attention_mask, past_key_values)}
