"""Auxiliary attribute read-outs (training only). Each declares, in one place, when it is on, the
targets it needs from a sample, and its loss.

Both read an object's words -- per attribute group (``TokenAuxConfig.attributes``, e.g. size /
colour / shape) the index + 1 of the group's word, 0 = none, IGNORE = unknown -- through one linear
layer (``copies`` x G classifications over "none" + the group's words):

- ``TokenAttributes`` (``loss.token_aux``): the LM's last-layer state at every image token predicts
  the words of the object centred in, and of the object covering, that token's cell
  (perception/data/token_targets.py), so the image tokens carry object identity.
- ``RegionAttributes`` (``loss.region_aux``): every region embedding -- the user's regions and each
  fed-back ``<loc>``'s object -- predicts its object's words, so the embedding the LM reads
  carries the object's shape, not only its position and colour.

- ``ObjectTokens`` (perception/objects.py; ``objects.enabled``): unlike the read-outs it also runs
  at inference (proposals, object tokens, the ``<loc>`` pointer); here it declares its collation
  targets and its losses ``pointer`` and ``proposal`` (``loss`` may return a dict of named parts).

Collation (``sample_targets``) returns, per sample, tensors whose first dimension is concatenated
over the batch; ``loss`` reads those and the forward pass's ``AuxInputs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from perception.data.token_targets import object_targets, token_targets
from perception.objects import ObjectTokens
from perception.prompting import IGNORE


@dataclass
class AuxInputs:
    """What an auxiliary head reads from a training forward pass.

    hidden (B, T, D) last-layer states; input_ids (B, T); image_id: the image placeholder id;
    region_embeds (``RegionEmbeds``: (R, D) vectors, (R, 4) boxes) or None; fed (K,) bool over the batch's <loc>s, feedback (F, D) the
    embeddings fed to the ``fed`` ones (F = fed.sum()), or None; state the batch's ImageState;
    loc_id / object_id the ``<loc>`` and ``<obj>`` ids (object_id None without object tokens);
    labels (B, T) the answer tokens (IGNORE elsewhere); score_features (B, T, F) or None
    (``PerceptionModel.object_score_features``).
    """

    hidden: torch.Tensor
    input_ids: torch.Tensor
    image_id: int
    region_embeds: object  # perception.regions.RegionEmbeds or None
    fed: Optional[torch.Tensor]
    feedback: Optional[torch.Tensor]
    state: object = None
    loc_id: Optional[int] = None
    object_id: Optional[int] = None
    labels: Optional[torch.Tensor] = None
    score_features: Optional[torch.Tensor] = None  # (B, T, F) object tokens' features the scores read (ObjectTokens.score_features), or None


@dataclass
class SampleObjects:
    """One sample's objects as collation sees them: ``frame`` its ImageFrame, ``grid`` the side of
    the square image-token grid, ``loc_objects`` the object index of each <loc> (all turns, in
    order), ``region_objects`` the object index (or None) of each region, in placeholder order,
    ``rng`` the collator's numpy Generator (random choices in targets)."""

    sample: object
    frame: object
    grid: int
    loc_objects: list
    region_objects: list
    rng: object = None


class _AttributeReadout(nn.Module):
    copies = 1

    def __init__(self, cfg, dim: int, num_image_tokens: int):
        super().__init__()
        self.sizes = [len(g) + 1 for g in cfg.token_aux.attributes] * self.copies  # e.g. centre groups, then cover groups
        self.proj = nn.Linear(dim, sum(self.sizes))

    def group_logits(self, states: torch.Tensor) -> tuple:
        """states: (..., D) -> per attribute group (copies x G), (..., 1 + its words) logits (0: none)."""
        return self.proj(states.float()).split(self.sizes, -1)

    def probabilities(self, states: torch.Tensor) -> list:
        """``group_logits`` as probabilities."""
        return [g.softmax(-1) for g in self.group_logits(states)]

    def readout_loss(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """states: (..., D); targets: (..., copies * G) long (IGNORE = no target).
        Returns the mean cross-entropy over the groups that have targets (0 when none do)."""
        logits = self.group_logits(states)
        parts = []
        for j, lg in enumerate(logits):
            t = targets[..., j].reshape(-1)
            if (t != IGNORE).any():
                parts.append(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), t, ignore_index=IGNORE))
        return torch.stack(parts).mean() if parts else states.sum() * 0.0


class TokenAttributes(_AttributeReadout):
    name = "token_aux"
    copies = 2  # centre targets, then cover targets

    def __init__(self, cfg, dim: int, num_image_tokens: int):
        g = int(round(num_image_tokens ** 0.5))
        if g * g != num_image_tokens:
            raise ValueError(f"token_aux needs a square image-token grid; this backbone has {num_image_tokens} tokens")
        super().__init__(cfg, dim, num_image_tokens)

    @staticmethod
    def enabled(cfg) -> bool:
        return bool(cfg.token_aux.attributes) and cfg.loss.token_aux > 0 and cfg.output_mode == "perception"

    @staticmethod
    def sample_targets(cfg, s: SampleObjects) -> dict:
        tt = token_targets(s.sample.labels, s.sample.masks, s.sample.boxes, s.frame, s.grid,
                           cfg.token_aux.attributes, cfg.token_aux.min_cover)
        return {"token_targets": tt[None]}

    def loss(self, x: AuxInputs, batch: dict):
        """Mean cross-entropy of the image-token states against ``token_targets`` (B, g*g, 2G)."""
        is_img = x.input_ids == x.image_id
        rows = is_img.any(1)
        img_states = x.hidden[is_img].reshape(int(rows.sum()), -1, x.hidden.shape[-1])
        return self.readout_loss(img_states, batch["token_targets"][rows])


class RegionAttributes(_AttributeReadout):
    name = "region_aux"

    @staticmethod
    def enabled(cfg) -> bool:
        return bool(cfg.token_aux.attributes) and cfg.loss.region_aux > 0 and cfg.output_mode == "perception"

    @staticmethod
    def sample_targets(cfg, s: SampleObjects) -> dict:
        G = len(cfg.token_aux.attributes)
        objs = object_targets(s.sample.labels, cfg.token_aux.attributes) if len(s.sample.labels) else torch.zeros(0, G, dtype=torch.long)
        none = torch.full((G,), IGNORE, dtype=torch.long)
        pick = lambda ks: torch.stack([objs[k] if k is not None else none for k in ks]) if ks else torch.zeros(0, G, dtype=torch.long)
        return {"loc_attrs": pick(s.loc_objects), "region_attrs": pick(s.region_objects)}

    def loss(self, x: AuxInputs, batch: dict):
        """Read-out of every region embedding and every fed-back <loc> embedding; None when the batch has neither."""
        vecs, tgts = [], []
        if x.region_embeds is not None:
            vecs.append(x.region_embeds.vectors)
            tgts.append(batch["region_attrs"])
        if x.feedback is not None:
            vecs.append(x.feedback)
            tgts.append(batch["loc_attrs"][x.fed])
        return self.readout_loss(torch.cat(vecs), torch.cat(tgts)) if vecs else None


AUX_HEADS = (TokenAttributes, RegionAttributes, ObjectTokens)  # a new auxiliary head is one more entry here


def enabled_aux_heads(cfg) -> list:
    return [A for A in AUX_HEADS if A.enabled(cfg)]
