"""Linear attribute read-outs (training-only auxiliaries; see TokenAuxConfig).

For G attribute groups with n_g words each, a linear layer maps a vector to ``copies`` x G
classifications, each over "none" + the group's words. On the image tokens (``copies=2``): the
"centre" targets (the object whose box centre lies in the token's cell) and the "cover" targets
(the object covering most of the cell), from ``perception.data.token_targets``. On region
embeddings (``copies=1``): the words of the region's object.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perception.prompting import IGNORE


class TokenAuxHead(nn.Module):
    def __init__(self, cfg, dim: int, copies: int = 2):
        super().__init__()
        self.sizes = [len(g) + 1 for g in cfg.attributes] * copies  # e.g. centre groups, then cover groups
        self.proj = nn.Linear(dim, sum(self.sizes))

    def loss(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """states: (..., D); targets: (..., copies * G) long (IGNORE = no target).
        Returns the mean cross-entropy over the groups that have targets (0 when none do)."""
        logits = self.proj(states.float()).split(self.sizes, -1)
        parts = []
        for j, lg in enumerate(logits):
            t = targets[..., j].reshape(-1)
            if (t != IGNORE).any():
                parts.append(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), t, ignore_index=IGNORE))
        return torch.stack(parts).mean() if parts else states.sum() * 0.0
