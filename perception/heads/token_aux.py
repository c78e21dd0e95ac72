"""Dense attribute read-out on the image tokens (a training-only auxiliary; see TokenAuxConfig).

For G attribute groups with n_g words each, a linear layer maps the LM's last-layer state at each
image token to 2 x G classifications: the "centre" targets (the object whose box centre lies in
the token's cell) and the "cover" targets (the object covering most of the cell), each over
"none" + the group's words. Targets come from ``perception.data.token_targets``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perception.prompting import IGNORE



class TokenAuxHead(nn.Module):
    def __init__(self, cfg, lm_dim: int):
        super().__init__()
        self.sizes = [len(g) + 1 for g in cfg.attributes] * 2  # centre groups, then cover groups
        self.proj = nn.Linear(lm_dim, sum(self.sizes))

    def loss(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """states: (B, N, D) at the image tokens; targets: (B, N, 2G) long (IGNORE = no target).
        Returns the mean cross-entropy over the groups that have targets (0 when none do)."""
        logits = self.proj(states.float()).split(self.sizes, -1)
        parts = []
        for j, lg in enumerate(logits):
            t = targets[..., j].reshape(-1)
            if (t != IGNORE).any():
                parts.append(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), t, ignore_index=IGNORE))
        return torch.stack(parts).mean() if parts else states.sum() * 0.0
