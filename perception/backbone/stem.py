"""The tiny preset's backbone: a conv stem (vision encoder) + projector + a Llama built from config.

It is LLaVA's architecture (vision encoder -> projector -> LM, image tokens merged at <image>
positions) with a convolutional encoder, because from-scratch ViT towers do not learn to localise
within a CPU budget (shared/TRAINING-NOTES.md). Input: (B, 3, 160, 160); maps at stride 2/4/8/16;
the stride-16 map (10 x 10) plus a learned 2-D position embedding gives 100 image tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from perception.backbone.base import Backbone, VisualFeatures


def _block(cin, cout, stride):
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(groups, cout), nn.GELU(),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.GroupNorm(groups, cout), nn.GELU(),
    )


class ConvStem(nn.Module):
    """(B, 3, S, S) -> {"s2", "s4", "s8", "s16"}: (B, C_i, S/2^i, S/2^i)."""

    def __init__(self, channels):
        super().__init__()
        c = [3] + list(channels)
        self.stages = nn.ModuleList(_block(c[i], c[i + 1], 2) for i in range(len(channels)))

    def forward(self, x):
        maps = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            maps[f"s{2 ** (i + 1)}"] = x
        return maps


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(1, grid*grid, dim) 2-D sine-cosine position embedding (x in the first half, y in the second)."""
    q = dim // 4
    omega = 1.0 / (100.0 ** (torch.arange(q, dtype=torch.float32) / q))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    parts = []
    for pos in (xs.flatten(), ys.flatten()):
        a = pos[:, None] * omega[None]
        parts += [a.sin(), a.cos()]
    pe = torch.cat(parts, 1)
    return torch.nn.functional.pad(pe, (0, dim - pe.shape[1]))[None] * 0.5


class StemLlamaBackbone(Backbone):
    lm_prefix = "llm"
    supports_padded_batch = True
    supports_attention_blocks = True  # its Llama takes a 4-D attention mask as given

    def __init__(self, cfg, vocab_size: int):
        super().__init__(cfg)
        t = cfg.text
        self.stem = ConvStem(cfg.stem.channels)
        s16 = cfg.image_size // 16
        g = cfg.stem.token_grid
        if g < 1 or s16 % g:
            raise ValueError(f"image_size {cfg.image_size} gives a {s16}x{s16} stride-16 grid, which stem.token_grid "
                             f"{g} does not divide")
        self.pool = s16 // g  # each image token averages a pool x pool cell of the stride-16 map
        c16 = cfg.stem.channels[-1]
        self.pos_embed = nn.Parameter(sincos_2d(g, c16))  # learnable, starts as fixed 2-D sin-cos
        self.projector = nn.Sequential(nn.Linear(c16, t.hidden_size), nn.GELU(), nn.Linear(t.hidden_size, t.hidden_size))
        self.llm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab_size,
                hidden_size=t.hidden_size,
                intermediate_size=t.intermediate_size,
                num_hidden_layers=t.num_layers,
                num_attention_heads=t.num_heads,
                num_key_value_heads=t.num_heads,
                max_position_embeddings=t.max_positions,
                tie_word_embeddings=False,
            )
        )
        self.hidden_size = t.hidden_size
        self.num_image_tokens = g * g

    def encode_images(self, pixel_values):
        maps = self.stem(pixel_values)
        m16 = maps["s16"] if self.pool == 1 else F.avg_pool2d(maps["s16"], self.pool)
        s16 = m16.flatten(2).transpose(1, 2)  # (B, N, C16), N = token_grid**2
        return VisualFeatures(self.projector(s16 + self.pos_embed), maps)

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def forward_embeds(self, inputs_embeds, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None):
        out = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=True,
        )
        return out.logits, out.hidden_states[-1], out.past_key_values

    def resize_token_embeddings(self, n: int) -> None:
        if n != self.llm.get_input_embeddings().num_embeddings:
            self.llm.resize_token_embeddings(n)
