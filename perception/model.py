"""PerceptionModel: a backbone adapter + box head + mask head + region encoder, composed like SAM.

Data flow (shapes for B images, T tokens, K perception tokens, R regions):
  pixel_values (B,3,S,S) -> backbone.encode_images -> VisualFeatures(tokens (B,N,D), maps)
                          -> mask_head.features     -> MaskFeatures(pixels (B,C,h,w))
  Regions -> region_encoder -> (R,D) ; input_ids (B,T) -> embeddings, image tokens and region
  embeddings merged by masked scatter (``merge_placeholders``) -> LM -> logits (B,T,V), hidden (B,T,D)
  ``perception_states`` -> (K,D) -> box_head (K,4) / mask_head (K,h,w)
Object-token models (``objects.enabled``, perception/objects.py): ``encode_images`` also proposes
objects (ImageState.objects, K slots), merged into the ``<obj>`` placeholders of every turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perception import losses as L
from perception.backbone import build_backbone
from perception.config import PerceptionConfig
from perception.geometry import boxes_of_masks, components_at, context_boxes
from perception.heads import BoxHead, RegionEncoder, build_mask_head
from perception.heads.aux import AuxInputs, enabled_aux_heads
from perception.objects import ensure_object_token, object_attention_mask, object_slots, placeholder_values
from perception.prompting import IGNORE, PromptEncoder, image_after_question
from perception.regions import RegionEmbeds


def perception_states(hidden: torch.Tensor, input_ids: torch.Tensor, loc_id: int):
    """Find the hidden states that decode into objects.

    The state used for the perception token at position t is the last-layer hidden state at
    position t - 1: the position whose logits *predict* ``<loc>``. In generation this state exists
    as soon as ``<loc>`` is sampled (no extra forward pass); in training it is the same index.

    hidden: (B, T, D); input_ids: (B, T). Returns (states (K, D), batch_index (K,), position (K,))
    where position is t (the index of the ``<loc>`` token), ordered batch-major then by position.
    A ``<loc>`` at t = 0 has no predicting position and is skipped.
    """
    is_loc = input_ids == loc_id
    is_loc[:, 0] = False
    b, t = is_loc.nonzero(as_tuple=True)
    return hidden[b, t - 1], b, t


def merge_embeddings(inputs_embeds, input_ids, token_id, values, what: str):
    """Scatter ``values`` (M, D) into the positions of ``token_id`` (row-major), as LLaVA merges images.

    Raises ValueError naming both counts when the number of placeholders and values disagree.
    """
    mask = input_ids == token_id
    n = int(mask.sum())
    m = 0 if values is None else values.shape[0]
    if n != m:
        raise ValueError(f"{what}: {n} placeholder token(s) in the text but {m} {what} embedding(s) given")
    if n == 0:
        return inputs_embeds
    return inputs_embeds.masked_scatter(mask[..., None].expand_as(inputs_embeds), values.to(inputs_embeds.dtype))


def merge_placeholders(inputs_embeds, input_ids, parts):
    """``parts``: [(placeholder token id, values (M, D) or None, what)], each merged by ``merge_embeddings``."""
    for token_id, values, what in parts:
        inputs_embeds = merge_embeddings(inputs_embeds, input_ids, token_id, values, what)
    return inputs_embeds


@dataclass
class ImageState:
    """Features of a batch of images, computed once and reused across turns."""

    visual: object  # VisualFeatures
    mask: object  # MaskFeatures
    objects: object = None  # ObjectSet (perception/objects.py) of object-token models, else None

    def select(self, index) -> "ImageState":
        objects = None if self.objects is None else self.objects.select(index)
        return ImageState(self.visual.select(index), self.mask.select(index), objects)


class PerceptionModel(nn.Module):
    def __init__(self, config: PerceptionConfig, tokenizer, pretrained_backbone: bool = True):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer = ensure_object_token(config, tokenizer)
        self.backbone = build_backbone(config.backbone, len(tokenizer), pretrained=pretrained_backbone)
        self.prompts = PromptEncoder(tokenizer, self.backbone.num_image_tokens, object_slots(config),
                                     image_after_question=image_after_question(config))
        if hasattr(self.backbone, "set_image_token_id"):
            self.backbone.set_image_token_id(self.prompts.image_id)
        if config.objects.enabled and config.objects.bidirectional and not self.backbone.supports_attention_blocks:
            raise ValueError(f"objects.bidirectional needs a backbone that takes a (B, 1, T, T) attention mask; "
                             f"{type(self.backbone).__name__} does not (set objects.bidirectional: false)")
        D = self.backbone.hidden_size
        channels = self._map_channels()
        self.mask_head = build_mask_head(config.mask_head, D, channels)
        feat_dim = config.mask_head.dim
        self.box_head = BoxHead(config.box_head, D)
        self.region_encoder = RegionEncoder(config.region, D, feat_dim)
        self.aux_names = []  # auxiliary heads (perception/heads/aux.py), each an attribute named by its loss
        for A in enabled_aux_heads(config):
            setattr(self, A.name, A(config, D, self.backbone.num_image_tokens))
            self.aux_names.append(A.name)

    def _map_channels(self) -> dict:
        with torch.no_grad():
            S = self.config.backbone.image_size
            dev = next(self.backbone.parameters()).device
            vis = self.backbone.encode_images(torch.zeros(1, 3, S, S, device=dev))
        ch = {k: v.shape[1] for k, v in vis.maps.items()}
        if "grid" in vis.maps:
            ch["_grid_size"] = vis.maps["grid"].shape[-1]
        return ch

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def loc_id(self) -> int:
        return self.prompts.loc_id

    # --- images and regions -------------------------------------------------------------------
    def encode_images(self, pixel_values, mask_pixel_values=None, propose: bool = True) -> ImageState:
        """Image features; with object tokens also the proposals (``propose``; training gives its own)."""
        vis = self.backbone.encode_images(pixel_values)
        state = ImageState(vis, self.mask_head.features(vis, mask_pixel_values))
        ot = getattr(self, "object_tokens", None)
        if ot is not None and propose and self.config.objects.proposals == "heatmap":
            state.objects = ot.propose(self.mask_head, self.region_encoder, state.mask)
        return state

    def encode_regions(self, state: ImageState, regions):
        """``Regions`` (perception/regions.py, normalised model frame) -> ``RegionEmbeds`` (the (R, D)
        embeddings and the (R, 4) boxes they encode), or None.

        Point regions become masks through the click path first, the component at the click only
        (``use_mask`` keeps the given mask instead: training teacher-forces some clicks); a click's box is its mask's tight box (a
        small box around the click when the mask is empty).
        """
        if regions is None or len(regions) == 0:
            return None
        masks, boxes = regions.masks.float(), regions.boxes
        if regions.is_point.any():
            sel = regions.is_point.nonzero().flatten()
            with torch.no_grad():
                logits = self.mask_head.from_points(state.mask, regions.points[sel], regions.bidx[sel])
                clicked = components_at(logits.sigmoid() > self.config.mask_head.mask_threshold, regions.points[sel]).float()
            clicked = L.mask_to_size(clicked, masks.shape[-2:])
            if regions.use_mask is not None:
                clicked = torch.where(regions.use_mask[sel][:, None, None], masks[sel], clicked)
            masks = masks.clone()
            masks[sel] = clicked
            pbox, ok = boxes_of_masks(clicked)
            around = context_boxes(regions.points[sel].repeat(1, 2).float(), 0.0, min_side=0.1)
            boxes = boxes.clone()
            boxes[sel] = torch.where(ok[:, None], pbox, around).to(boxes.dtype)
        return RegionEmbeds(self.region_encoder(boxes, masks, state.mask.pixels[regions.bidx]), boxes.float())

    def embed(self, input_ids, state: ImageState, region_embeds=None, loc_feedback=None):
        """(B, T) ids -> (B, T, D) input embeddings with image and region embeddings merged
        (region_embeds: ``RegionEmbeds`` of the ``<region>`` placeholders, or None).

        loc_feedback: optional (tuple of ``is_fed`` (K,) bool over the <loc> tokens in row-major
        order, embeddings (F, D) for the fed ones), added to those <loc> input embeddings.
        """
        emb = self.backbone.embed_tokens(input_ids)
        has_image = (input_ids == self.prompts.image_id).any(1)
        img = state.visual.tokens[has_image].reshape(-1, emb.shape[-1]) if has_image.any() else None
        regs = region_embeds.vectors if region_embeds is not None else None
        parts = [(self.prompts.image_id, img, "image"), (self.prompts.region_id, regs, "region")]
        if self.prompts.object_id is not None:
            values = placeholder_values(input_ids, self.prompts.object_id, state.objects)
            if self.object_tokens.relation is not None:
                values = values + self.object_tokens.region_relations(input_ids, self.prompts.object_id, self.prompts.region_id, region_embeds,
                                                                      state.objects, getattr(self, "region_aux", None))
            parts.append((self.prompts.object_id, values, "object"))
        emb = merge_placeholders(emb, input_ids, parts)
        if loc_feedback is not None and loc_feedback[1].shape[0]:
            is_fed, fb = loc_feedback
            pos = (input_ids == self.loc_id).nonzero(as_tuple=True)
            emb = emb.index_put((pos[0][is_fed], pos[1][is_fed]), fb.to(emb.dtype), accumulate=True)
        return emb

    def lm_attention(self, input_ids, attention_mask=None):
        """The attention mask to run a whole prompt (or teacher-forced batch) with: ``attention_mask``
        (B, T) as given (None: no padding), or with ``objects.bidirectional`` the (B, 1, T, T) one in
        which each turn's object tokens see one another (perception.objects.object_attention_mask).
        Decoding steps after the prompt attend to everything before them and need neither."""
        oc = self.config.objects
        if not (oc.enabled and oc.bidirectional):
            return attention_mask
        return object_attention_mask(input_ids, self.prompts.object_id, oc.max_objects, attention_mask)

    def object_score_features(self, input_ids, objects, region_embeds=None):
        """(B, T, F) the features at every ``<obj>`` position that the match scores and the pointer
        read directly (objects: the ObjectSet of the B images, ImageState.objects;
        ObjectTokens.score_features: ``objects.relation_scores``, ``objects.position_scores``), or
        None for a model whose scores read none."""
        ot = getattr(self, "object_tokens", None)
        if ot is None or ot.score_weights is None:
            return None
        return ot.score_features(input_ids, self.prompts.object_id, self.prompts.region_id, region_embeds, objects,
                                 getattr(self, "region_aux", None))

    def feedback_embeds(self, state: ImageState, masks, bidx):
        """(K, h, w) object masks in [0, 1] (model frame) of images ``bidx`` -> (K, D) embeddings
        added to their <loc> tokens' inputs (``config.loc_feedback``): the region encoder reads
        the object the model just grounded, so later tokens know which one it was."""
        boxes, _ = boxes_of_masks(masks)
        return self.region_encoder(boxes, masks.float(), state.mask.pixels[bidx])

    # --- decoding states into objects ---------------------------------------------------------
    def decode_states(self, state: ImageState, states, bidx):
        """(K, D) perception-token states -> (mask logits (K,h,w), boxes (K,4) normalised)."""
        return self.mask_head.from_states(state.mask, states, bidx), self.box_head(states)

    # --- training -----------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        """Teacher-forced losses as a dict of named parts plus "loss" (the weighted sum).

        batch (perception.data.collate.Collator): pixel_values (B,3,S,S), [mask_pixel_values],
        input_ids/attention_mask/labels (B,T), loc_masks (K,h,w) and loc_boxes (K,4) for every
        <loc> in batch order, loc_fed (K,) bool (the <loc>s generation would feed back: each
        sample's last answer), regions (Regions) or None, clicks {"bidx","points","masks"} or None,
        and each enabled auxiliary head's targets.
        """
        w = self.config.loss
        state = self.encode_images(batch["pixel_values"], batch.get("mask_pixel_values"), propose=False)
        if "object_masks" in batch:
            state.objects = self.object_tokens.from_batch(self.mask_head, self.region_encoder, state.mask, batch)
        region_embeds = self.encode_regions(state, batch.get("regions"))
        fed, fb = batch.get("loc_fed"), None
        if self.config.loc_feedback and fed is not None and bool(fed.any()):
            bidx_all = (batch["input_ids"] == self.loc_id).nonzero(as_tuple=True)[0]
            fb = self.feedback_embeds(state, batch["loc_masks"][fed].to(state.mask.pixels.dtype), bidx_all[fed])
        emb = self.embed(batch["input_ids"], state, region_embeds, (fed, fb) if fb is not None else None)
        logits, hidden, _ = self.backbone.forward_embeds(emb, self.lm_attention(batch["input_ids"], batch.get("attention_mask")))
        out = {"ce": nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE
        )}
        states, bidx, _ = perception_states(hidden, batch["input_ids"], self.loc_id)
        if states.shape[0]:
            mlog, boxes = self.decode_states(state, states, bidx)
            target = L.mask_to_size(batch["loc_masks"].to(mlog.dtype), mlog.shape[-2:])
            out["mask_bce"], out["mask_dice"] = L.sigmoid_bce(mlog, target), L.dice(mlog, target)
            out["box_l1"], out["box_giou"] = L.box_l1_giou(boxes, batch["loc_boxes"].float())
        clicks = batch.get("clicks")
        if clicks is not None and len(clicks["bidx"]):
            clog = self.mask_head.from_points(state.mask, clicks["points"], clicks["bidx"])
            ct = L.mask_to_size(clicks["masks"].to(clog.dtype), clog.shape[-2:])
            out["click"] = L.sigmoid_bce(clog, ct) + L.dice(clog, ct)
        aux_in = AuxInputs(hidden, batch["input_ids"], self.prompts.image_id, region_embeds, fed, fb,
                           state, self.loc_id, self.prompts.object_id, batch["labels"],
                           self.object_score_features(batch["input_ids"], state.objects, region_embeds))
        for name in self.aux_names:
            value = getattr(self, name).loss(aux_in, batch)
            if isinstance(value, dict):
                out.update(value)
            elif value is not None:
                out[name] = value
        out["loss"] = sum(getattr(w, k) * v for k, v in out.items())
        return out
