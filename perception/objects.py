"""Question-aware object tokens and the ``<loc>`` pointer (``objects.enabled``; off by default).

Flow (B images, K = ``objects.max_objects`` slots, D the LM width, m the mask head's output side):

  mask features (B, C, h, w) --ProposalHead--> centre heatmap --peaks--> clicks --mask_head.from_points-->
  proposal masks (B, K, m, m) [or masks given by the caller: "oracle", and training's ground truth]
  each valid slot: region_encoder(box, mask, features) + Linear(Fourier(cx, cy, w, h)) -> (B, K, D)
  an empty slot: one learned embedding

Every turn of the prompt carries the K tokens after the user's text (perception/prompting.py):
``USER: {text} <obj>xK ASSISTANT:``, so each object token can attend to the question. At each
``<loc>``, the state that predicted it (perception_states' rule) scores the current turn's
object-token states (last layer): q(state) . k(obj) / sqrt(P), empty slots excluded. Training:
cross-entropy against the slot of the ``<loc>``'s object (``loc_slots``; IGNORE when its object
has no proposal). Inference (perception/decoding.py): the best slot no earlier ``<loc>`` of the
answer took; its proposal mask and box are the object, and the mask is what ``<loc>`` feedback
feeds back. An answer about an absent object has no ``<loc>``: the LM writes it.

``ObjectTokens`` is also an auxiliary-head entry (perception/heads/aux.py): it declares its
collation targets (ground-truth masks as proposals, shuffled, sometimes one dropped or one extra
background box) and its two losses, "pointer" and "proposal" (centre heatmap focal loss).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perception.geometry import boxes_of_masks, components_at, mask_at_click, mask_iou, pairwise_box_iou
from perception.heads.proposals import ProposalHead, centre_focal_loss, centre_heatmap, heatmap_peaks
from perception.prompting import IGNORE
from perception.regions import box_mask


def objects_on(cfg) -> bool:
    """Whether PerceptionConfig ``cfg`` has object tokens (the text-box baseline never has)."""
    return cfg.objects.enabled and cfg.output_mode == "perception"


def object_slots(cfg) -> int:
    """Object tokens per turn for PerceptionConfig ``cfg`` (0 when object tokens are off)."""
    return cfg.objects.max_objects if objects_on(cfg) else 0


def ensure_object_token(cfg, tokenizer):
    """The tokenizer an object-token model uses: ``tokenizer`` itself when it has ``<obj>`` or
    object tokens are off, else a copy with ``<obj>`` added after every other id (the caller's
    tokenizer is never changed: other models may share it)."""
    from perception.tokenizer import add_object_token
    from perception.tokens import OBJECT_TOKEN

    if not objects_on(cfg) or OBJECT_TOKEN in tokenizer.get_vocab():
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    add_object_token(tokenizer)
    return tokenizer


@dataclass
class ObjectSet:
    """The proposals of a batch of images, in slot order (model frame).

    masks (B, K, m, m) in [0, 1]; boxes (B, K, 4) normalised corners (zeros when empty);
    valid (B, K) bool (a slot holds a proposal); scores (B, K) proposal confidence (1 when given);
    embeds (B, K, D) the object-token input embeddings; codes (B, K, D) the region encoder's part of
    them (without the position), which ``region_relations`` compares with a turn's regions (zeros
    when empty; None unless the model has ``objects.region_relation``).
    The model's own proposals also keep their clicks: logits (B, K, m, m) the mask head's logits for
    each click and points (B, K, 2) the clicks, normalised model-frame (x, y); None for given masks.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor
    scores: torch.Tensor
    embeds: torch.Tensor
    codes: torch.Tensor = None
    logits: torch.Tensor = None
    points: torch.Tensor = None

    def select(self, index) -> "ObjectSet":
        fields = (self.masks, self.boxes, self.valid, self.scores, self.embeds, self.codes, self.logits, self.points)
        return ObjectSet(*(None if t is None else t[index] for t in fields))

    def pixel_mask(self, b: int, j: int, frame, threshold: float = 0.5) -> np.ndarray:
        """Slot ``j`` of image ``b`` as an H x W bool mask in input-image pixels (``frame``: an ImageFrame).

        A proposal of the model's own is segmented in pixels as a click is (``Pipeline.segment_point``):
        its click's logits upsampled, ``threshold`` on the probability, the component at the click
        (``mask_at_click``) -- not its binary model-frame mask upsampled, whose edges are the model
        grid's (the shipped model's proposals, matched mIoU 0.889 -> 0.910 on the 1,000 evaluation
        scenes: docs/RESULTS.md). Given masks (the oracle's) are their model-frame masks upsampled at 0.5."""
        if self.logits is None or not bool(self.valid[b, j]):
            return (frame.logits_to_pixels(self.masks[b, j][None].float())[0] >= 0.5).cpu().numpy()
        prob = frame.logits_to_pixels(self.logits[b, j][None].float())[0].sigmoid().cpu().numpy()
        x, y = frame.points_to_pixels(self.points[b, j].float().cpu().numpy())
        return mask_at_click(prob, int(x), int(y), threshold)


def fourier_positions(boxes: torch.Tensor, freqs: int) -> torch.Tensor:
    """(N, 4) normalised corners -> (N, 8 * freqs): sin and cos of pi * 2^i * (cx, cy, w, h), i < freqs."""
    b = boxes.float()
    v = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], -1)  # (N, 4)
    f = math.pi * 2.0 ** torch.arange(freqs, device=b.device, dtype=torch.float32)
    ang = (v[..., None] * f).flatten(1)
    return torch.cat([ang.sin(), ang.cos()], -1)


def set_positions(boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each object's place among its image's objects, for the scores to read (``objects.position_scores``):
    boxes (B, K, 4) normalised model-frame corners, valid (B, K) bool -> (B, K, 4) =
    [2 cx - 1, 2 cy - 1, rank of cx, rank of cy], ranks among the image's valid objects scaled to
    [-1, 1] (-1: the leftmost / topmost; 0 with one object; ties share a rank); zeros in empty slots.
    Linear in the centre, so a deciding state weighs "leftmost" as one direction; the ranks keep
    neighbours one step apart however close their centres are."""
    c = (boxes[..., :2] + boxes[..., 2:]).float() / 2  # (B, K, 2)
    before = (c[:, :, None] > c[:, None]) & valid[:, None, :, None]  # (B, K, K, 2): object k' lies before k
    n = valid.sum(1).float()[:, None, None]  # (B, 1, 1)
    rank = torch.where(n > 1, 2 * before.sum(2).float() / (n - 1).clamp(min=1) - 1, torch.zeros_like(c))
    return torch.cat([2 * c - 1, rank], -1) * valid[..., None]


def relation_feature_count(cfg) -> int:
    """The region relation's features per object token (``ObjectTokens.region_relations``): G
    same-word probabilities (G attribute groups), the cosine, with ``objects.region_overlap`` the
    box IoU, and a last 1 (the object token's turn has a region)."""
    return len(cfg.token_aux.attributes) + 2 + (1 if cfg.objects.region_overlap else 0)


def score_feature_count(cfg) -> int:
    """F, the features per object token the scores read directly (``ObjectTokens.score_features``):
    the region relation's (``relation_feature_count``) with ``objects.relation_scores``, plus 4 with
    ``objects.position_scores``."""
    oc = cfg.objects
    return (relation_feature_count(cfg) if oc.relation_scores else 0) + (4 if oc.position_scores else 0)


def turn_rows(is_obj: torch.Tensor, k: int) -> torch.Tensor:
    """is_obj (B, T) bool, each turn holding k ``<obj>`` ids -> (turns,) the batch row of every turn,
    in row-major order (the order ``hidden[is_obj].view(-1, k, D)`` gives the turns)."""
    per_row = is_obj.sum(1) // k
    return torch.arange(len(per_row), device=is_obj.device).repeat_interleave(per_row)


def turn_object_states(hidden, input_ids, object_id: int, k: int, bidx, pos) -> torch.Tensor:
    """The object-token states of the turn each position is in: for position ``pos[i]`` of row
    ``bidx[i]``, the states (last layer) at the last ``k`` ``<obj>`` ids before it.

    hidden (B, T, D); input_ids (B, T); bidx, pos (L,). Returns (L, k, D). ValueError when a
    position has fewer than ``k`` object tokens before it.
    """
    is_obj = input_ids == object_id
    out = []
    for b, t in zip(bidx.tolist(), pos.tolist()):
        p = is_obj[b, :t].nonzero().flatten()
        if len(p) < k:
            raise ValueError(f"position {t} of row {b} has {len(p)} object token(s) before it; each turn needs {k}")
        out.append(hidden[b, p[-k:]])
    return torch.stack(out) if out else hidden.new_zeros(0, k, hidden.shape[-1])


def turn_names_region(input_ids, object_id: int, region_id: int, k: int) -> bool:
    """Whether the last turn of one prompt names a region: a ``<region>`` id after the previous
    turn's ``k`` object tokens (the whole prompt where the last turn is the first).

    input_ids (T,) one row, its last turn's object tokens already in it."""
    obj = (input_ids == object_id).nonzero().flatten()
    after = int(obj[-2 * k]) if len(obj) >= 2 * k else -1  # the previous turn's first <obj>
    return bool(((input_ids == region_id).nonzero().flatten() > after).any())


def object_attention_mask(input_ids, object_id: int, k: int, attention_mask=None) -> torch.Tensor:
    """The LM's attention when a turn's object tokens see one another (``objects.bidirectional``).

    input_ids (B, T); attention_mask (B, T) 1 on real tokens, 0 on padding (None: no padding) ->
    (B, 1, T, T) bool, True where query t may attend to key s: causal (s <= t), and also s > t
    when both are ``<obj>`` ids of the same turn (each turn's ``k`` consecutive ones, in order).
    No query sees a padded key, except that a padded query sees itself (no row is empty).
    """
    B, T = input_ids.shape
    dev = input_ids.device
    allowed = torch.ones(T, T, dtype=torch.bool, device=dev).tril()[None].expand(B, T, T)
    is_obj = input_ids == object_id
    turn = torch.where(is_obj, (is_obj.long().cumsum(1) - 1) // k, -1)  # (B, T) the turn of each <obj>, else -1
    allowed = allowed | ((turn[:, :, None] == turn[:, None, :]) & is_obj[:, :, None])
    if attention_mask is not None:
        real = attention_mask.bool()
        allowed = allowed & real[:, None, :]
        allowed = allowed | (torch.eye(T, dtype=torch.bool, device=dev)[None] & ~real[:, :, None])
    return allowed[:, None]


def placeholder_values(input_ids, object_id: int, objects) -> torch.Tensor:
    """(B, T) ids, an ObjectSet of B images (or None) -> (n, D) values for the ``<obj>`` ids in
    row-major order: each row's K embeddings once per turn. ValueError when there are no proposals
    (``objects.proposals: oracle`` leaves them to the caller) or a row's count is not a multiple of K."""
    if objects is None:
        raise ValueError("the prompt has object tokens but the image state has no proposals: with objects.proposals "
                         "'oracle' set ImageState.objects (ObjectTokens.from_masks) before embedding")
    embeds = objects.embeds
    K = embeds.shape[1]
    counts = (input_ids == object_id).sum(1).tolist()
    rows = []
    for b, n in enumerate(counts):
        if n % K:
            raise ValueError(f"row {b} has {n} object token(s), not a whole number of turns of {K}")
        rows.append(embeds[b].repeat(n // K, 1))
    return torch.cat(rows)


def match_proposals(proposals: list, truths: list, threshold: float = 0.5) -> list:
    """Greedy one-to-one matching by mask IoU (bool H x W arrays, same frame). Returns, per truth, the
    index of its proposal (IoU >= threshold) or None; the best pairs are matched first."""
    pairs = sorted(((mask_iou(p, t), i, j) for i, p in enumerate(proposals) for j, t in enumerate(truths)), reverse=True)
    used, match = set(), [None] * len(truths)
    for iou, i, j in pairs:
        if iou >= threshold and i not in used and match[j] is None:
            used.add(i)
            match[j] = i
    return match


def proposal_recall(proposals: list, truths: list, threshold: float = 0.5) -> tuple[float, list]:
    """Recall at ``threshold`` of ``truths`` by ``proposals`` (``match_proposals``) and the IoUs of
    the matched pairs (their mean is the matched-proposal mIoU)."""
    match = match_proposals(proposals, truths, threshold)
    ious = [mask_iou(proposals[i], t) for i, t in zip(match, truths) if i is not None]
    return (len(ious) / len(truths) if truths else 1.0), ious


# Tasks whose turns ask for objects even when the answer grounds none (ShapesRef v2's no-target
# requests and "same as <region1>"): their object tokens all learn "not asked for".
ASKS_FOR_OBJECTS = ("ground_none", "ground_all_none", "count_none", "same_as_region")


@torch.no_grad()
def with_own_proposals(tokens, mask_head, feats, masks, valid, is_gt, rows):
    """Training proposals of images ``rows`` replaced by the model's own (``proposal_masks``).

    masks (B, K, m, m) in [0, 1], valid / is_gt (B, K) bool: the collated ground-truth slots. In each
    row, proposals are matched one-to-one to the ground-truth slots by mask IoU >= 0.5 (best pairs
    first); a matched shown slot takes its proposal's mask, so every ``<loc>`` keeps its target
    slot (a proposal of a dropped object stays out); a ground-truth object no proposal found keeps
    its true mask; unmatched proposals (false positives) fill the free slots as valid non-objects.
    Returns new (masks, valid).
    """
    masks, valid = masks.clone(), valid.clone()
    pm, pv, _ = tokens.proposal_masks(mask_head, feats.select(rows))
    if pm.shape[-2:] != masks.shape[-2:]:
        pm = F.interpolate(pm, size=masks.shape[-2:], mode="nearest")
    for r, b in enumerate(rows.tolist()):
        props = pm[r][pv[r]].flatten(1) > 0.5  # (P, n)
        slots = is_gt[b].nonzero().flatten().tolist()  # shown and dropped ground truth (a dropped one is never re-added)
        match = match_proposals(list(props.cpu().numpy()), list((masks[b, slots].flatten(1) > 0.5).cpu().numpy()))
        used_p = {i for i in match if i is not None}
        for j, i in zip(slots, match):
            if i is not None and valid[b, j]:
                masks[b, j] = props[i].view(masks.shape[-2:]).to(masks.dtype)
        free = (~valid[b] & ~is_gt[b]).nonzero().flatten().tolist()
        for i in range(props.shape[0]):
            if i not in used_p and free:
                j = free.pop(0)
                masks[b, j] = props[i].view(masks.shape[-2:]).to(masks.dtype)
                valid[b, j] = True
    return masks, valid


def _duplicates(fg: torch.Tensor, bidx: torch.Tensor, threshold: float) -> torch.Tensor:
    """(P, n) flattened binary masks, best first within each image bidx (P,) -> (P,) bool: the
    mask overlaps an earlier mask of its image by IoU >= threshold."""
    inter = fg @ fg.T
    area = fg.sum(1)
    iou = inter / (area[:, None] + area[None] - inter).clamp(min=1)
    earlier = torch.ones_like(iou, dtype=torch.bool).tril(-1) & (bidx[:, None] == bidx[None])
    return ((iou >= threshold) & earlier).any(1)


class ObjectTokens(nn.Module):
    name = "object_tokens"  # the model's attribute; its losses are "pointer" and "proposal"

    def __init__(self, cfg, dim: int, num_image_tokens: int):
        super().__init__()
        oc = cfg.objects
        self.cfg = cfg
        self.k = oc.max_objects
        self.proposal_head = ProposalHead(cfg.mask_head.dim, dilations=tuple(oc.proposal_dilations), pool=oc.proposal_pool)
        self.position = nn.Linear(8 * oc.position_freqs, dim)  # position's own path (docs/ARCHITECTURE.md)
        self.empty = nn.Parameter(torch.zeros(dim))
        self.query = nn.Linear(dim, oc.pointer_dim)
        self.key = nn.Linear(dim, oc.pointer_dim)
        # "is this object one the turn asks for?" (loss.match): the turn's decision state against each object token
        self.match = MatchScore(dim, oc.pointer_dim) if cfg.loss.match > 0 else None
        # each object token's relation to the regions of its turn (objects.region_relation; region_relations)
        self.relation = None
        if oc.region_relation:
            self.relation = nn.Linear(relation_feature_count(cfg), dim)
            nn.init.zeros_(self.relation.weight)
            nn.init.zeros_(self.relation.bias)
        # features the scores read directly, weighed by the deciding state (score_features, feature_bonus):
        # the region relation's (objects.relation_scores) and the object's place among its image's (objects.position_scores)
        self.score_weights = None
        for opt in ("relation_scores", "region_overlap"):
            if getattr(oc, opt) and not oc.region_relation:
                raise ValueError(f"objects.{opt} needs the region relation's features: set objects.region_relation as well")
        width = score_feature_count(cfg)
        if width:
            self.score_weights = nn.ModuleDict({k: nn.Linear(dim, width) for k in ("match", "pointer")})
            for lin in self.score_weights.values():
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    enabled = staticmethod(objects_on)

    # --- proposals -> object tokens -----------------------------------------------------------
    def propose(self, mask_head, region_encoder, feats) -> ObjectSet:
        """Heatmap peaks -> clicks -> proposal masks (mask head's click path) -> ObjectSet, best
        first (``proposal_masks``), which keeps each proposal's click and its logits (``pixel_mask``)."""
        masks, valid, scores, logits, points = self.proposal_masks(mask_head, feats, clicks=True)
        objs = self.from_masks(region_encoder, feats, masks, valid, scores)
        return replace(objs, logits=logits, points=points)

    def proposal_masks(self, mask_head, feats, clicks: bool = False):
        """The proposals of images ``feats`` (B images): (masks (B, K, m, m) binary, valid (B, K)
        bool, scores (B, K)), best first; with ``clicks`` also (logits (B, K, m, m), points (B, K, 2)
        normalised model frame): each proposal's click and the mask head's logits for it. A proposal
        whose mask overlaps a better one's by IoU >= ``duplicate_iou`` (two peaks on one object) is
        not valid, so one object is one token."""
        oc = self.cfg.objects
        B = feats.pixels.shape[0]
        points, bidx, slot, score = heatmap_peaks(self.proposal_head(feats.pixels), self.k, oc.score_threshold, oc.nms_kernel)
        logits = mask_head.from_points(feats, points, bidx)
        fg = logits.sigmoid() > self.cfg.mask_head.mask_threshold
        if oc.proposal_component:
            fg = components_at(fg, points)
        fg = fg.float()
        keep = ~_duplicates(fg.flatten(1), bidx, oc.duplicate_iou)
        masks = logits.new_zeros((B, self.k, *logits.shape[-2:]))
        masks[bidx, slot] = fg.to(masks.dtype)
        scores = logits.new_zeros((B, self.k))
        scores[bidx, slot] = score.to(scores.dtype)
        valid = torch.zeros(B, self.k, dtype=torch.bool, device=masks.device)
        valid[bidx, slot] = keep
        if not clicks:
            return masks, valid, scores
        all_logits = logits.new_full((B, self.k, *logits.shape[-2:]), -20.0)
        all_logits[bidx, slot] = logits
        all_points = points.new_zeros((B, self.k, 2))
        all_points[bidx, slot] = points.to(all_points.dtype)
        return masks, valid, scores, all_logits, all_points

    def from_masks(self, region_encoder, feats, masks: torch.Tensor, valid: torch.Tensor, scores=None) -> ObjectSet:
        """Given proposals ("oracle": ground-truth masks) -> ObjectSet. masks (B, K, m, m) in [0, 1]
        (model frame); valid (B, K) bool. An empty mask is no proposal."""
        B, K = valid.shape
        if K != self.k:
            raise ValueError(f"{K} proposal slots given; this model has objects.max_objects = {self.k}")
        boxes, nonempty = boxes_of_masks(masks.flatten(0, 1))
        valid = valid & nonempty.view(B, K)
        embeds = self.empty.to(feats.pixels.dtype).expand(B, K, -1).clone()
        codes = torch.zeros_like(embeds) if self.relation is not None else None  # only the region relation reads them
        b, j = valid.nonzero(as_tuple=True)
        if len(b):
            vb = boxes.view(B, K, 4)[b, j]
            code = region_encoder(vb, masks[b, j].float(), feats.pixels[b])
            e = code + self.position(fourier_positions(vb, self.cfg.objects.position_freqs))
            embeds = embeds.index_put((b, j), e.to(embeds.dtype))
            if codes is not None:
                codes = codes.index_put((b, j), code.detach().to(codes.dtype))
        scores = valid.float() if scores is None else scores * valid
        return ObjectSet(masks * valid[..., None, None], boxes.view(B, K, 4) * valid[..., None], valid, scores, embeds, codes)

    def from_pixel_masks(self, region_encoder, feats, masks: list, frame) -> ObjectSet:
        """One image's given proposals, H x W bool masks in input-image pixels (at most K; ``frame``
        maps them to the model frame), in slot order -> ObjectSet of a batch of one."""
        from perception.processing import mask_side

        side = mask_side(self.cfg)
        grid = torch.zeros(1, self.k, side, side)
        for j, m in enumerate(masks):
            grid[0, j] = frame.mask_to_model(m, side)
        valid = torch.zeros(1, self.k, dtype=torch.bool)
        valid[0, :len(masks)] = True
        device = feats.pixels.device
        return self.from_masks(region_encoder, feats, grid.to(device), valid.to(device))

    # --- the pointer --------------------------------------------------------------------------
    def scores(self, loc_states: torch.Tensor, object_states: torch.Tensor, valid: torch.Tensor, features=None) -> torch.Tensor:
        """loc_states (L, D), object_states (L, K, D), valid (L, K) bool -> (L, K) pointer logits
        (-1e4 where a slot is not valid). features (L, K, F): the turns' object tokens' score
        features (``score_features``), or None for a model whose scores read none."""
        q = self.query(loc_states.float())
        k = self.key(object_states.float())
        s = torch.einsum("lp,lkp->lk", q, k) / math.sqrt(q.shape[-1])
        if features is not None and self.score_weights is not None:
            s = s + self.feature_bonus("pointer", loc_states, features)
        return s.masked_fill(~valid, -1e4)

    def match_scores(self, decision: torch.Tensor, object_states: torch.Tensor, features=None) -> torch.Tensor:
        """decision (N, D) the turns' decision states, object_states (N, K, D), features (N, K, F)
        or None -> (N, K) match logits (``MatchScore``, plus ``feature_bonus`` when the scores read
        features: ``score_features``)."""
        logits = self.match(decision, object_states)
        if features is not None and self.score_weights is not None:
            logits = logits + self.feature_bonus("match", decision, features)
        return logits

    # --- the turn's regions -------------------------------------------------------------------
    def region_relations(self, input_ids, object_id: int, region_id: int, region_embeds, objects: ObjectSet, readout=None):
        """What each object token is to the regions of its turn (``objects.region_relation``), added
        to the ``<obj>`` values (``placeholder_values``' order): zeros for a turn with no region and
        for empty slots; else ``relation`` of the mean over the turn's regions of the features
        [per attribute group, the probability that region and object read the same word (``readout``:
        the RegionAttributes head, whose read-out both embeddings are trained for; 0 without it),
        cosine(region embedding, object code) (1: the region *is* this object), with
        ``objects.region_overlap`` the IoU of the region's box with the object's (the same object by
        place: a look-alike elsewhere has 0), 1] (``relation_feature_count``).

        A turn's regions are the ``<region>`` ids after the previous turn's object tokens and before
        its own. input_ids (B, T); region_embeds: ``RegionEmbeds`` in row-major placeholder order, or None.
        The features carry no gradient (their parts are trained by their own losses); ``relation``
        learns which matter for what the turn asks ("the same colour as <region1>", "it").
        """
        is_obj = input_ids == object_id
        if region_embeds is None or not len(region_embeds) or objects.codes is None:
            return objects.embeds.new_zeros(int(is_obj.sum()), objects.embeds.shape[-1])
        feats = self._relation_features(input_ids, is_obj, region_id, region_embeds, objects, readout)  # no gradient
        return (self.relation(feats) * (feats[:, -1:] > 0)).to(objects.embeds.dtype)

    def score_features(self, input_ids, object_id: int, region_id: int, region_embeds, objects: ObjectSet, readout=None):
        """(B, T, F): at each ``<obj>`` position the features the match scores and the pointer read
        directly (``feature_bonus``; zeros elsewhere and in empty slots), or None for a model whose
        scores read none. F = ``score_feature_count``: with ``objects.relation_scores`` the
        features ``region_relations`` projects (``relation_feature_count``) (zeros in turns without a region), then with
        ``objects.position_scores`` the 4 of ``set_positions`` (the object's place among its image's)."""
        if self.score_weights is None:
            return None
        oc, W = self.cfg.objects, relation_feature_count(self.cfg)
        is_obj = input_ids == object_id
        out = torch.zeros(*input_ids.shape, score_feature_count(self.cfg), device=input_ids.device)
        col = 0
        if oc.relation_scores:
            if region_embeds is not None and len(region_embeds) and objects.codes is not None:
                out[..., :W][is_obj] = self._relation_features(input_ids, is_obj, region_id, region_embeds, objects, readout)
            col = W
        if oc.position_scores:
            place = set_positions(objects.boxes, objects.valid)  # (B, K, 4)
            # each turn's K tokens are its image's K slots in order
            out[..., col:col + 4][is_obj] = place[turn_rows(is_obj, self.k)].flatten(0, 1).to(out.dtype)
        return out

    def feature_bonus(self, which: str, states: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """``which`` ("match" | "pointer") scores' share of the score features: states (N, D) the
        deciding states, feats (N, K, F) their turns' object tokens' features (``score_features``)
        -> (N, K) logits, a learned (zero at the start) weighing of the features by what the state asks."""
        return torch.einsum("nf,nkf->nk", self.score_weights[which](states.float()), feats.float())

    @torch.no_grad()
    def _relation_features(self, input_ids, is_obj, region_id, region_embeds, objects: ObjectSet, readout):
        """(n, ``relation_feature_count``) features for the n ``<obj>`` ids in row-major order (``region_relations``)."""
        K, G, W = self.k, len(self.cfg.token_aux.attributes), relation_feature_count(self.cfg)
        is_reg = input_ids == region_id
        feats, r0 = [], 0
        for b in range(input_ids.shape[0]):
            starts = is_obj[b].nonzero().flatten().view(-1, K)[:, 0].contiguous()  # (turns,) each turn's first <obj>
            rpos = is_reg[b].nonzero().flatten()
            regs = region_embeds.vectors[r0:r0 + len(rpos)].float()
            rboxes = region_embeds.boxes[r0:r0 + len(rpos)]
            r0 += len(rpos)
            f = torch.zeros(len(starts), K, W, device=input_ids.device)
            turn = torch.searchsorted(starts, rpos)  # the turn whose object tokens follow each region
            keep = turn < len(starts)
            if bool(keep.any()):
                regs, rboxes, turn = regs[keep], rboxes[keep], turn[keep]
                codes, R = objects.codes[b].float(), len(turn)
                if readout is not None and G:
                    pr, po = (readout.probabilities(x)[:G] for x in (regs, codes))
                    same = torch.stack([a[..., 1:] @ o[..., 1:].T for a, o in zip(pr, po)], -1)  # (R, K, G), "none" left out
                else:
                    same = regs.new_zeros(R, K, G)
                parts = [same, F.cosine_similarity(regs[:, None], codes[None], dim=-1)[..., None]]  # (R, K, G), (R, K, 1)
                if self.cfg.objects.region_overlap:
                    parts.append(pairwise_box_iou(rboxes, objects.boxes[b])[..., None].to(regs.dtype))  # (R, K, 1)
                pair = torch.cat(parts + [regs.new_ones(R, K, 1)], -1) * objects.valid[b][None, :, None]
                f.index_add_(0, turn, pair)
                f /= torch.bincount(turn, minlength=len(starts)).clamp(min=1)[:, None, None]  # the mean over the turn's regions
            feats.append(f.flatten(0, 1))
        return torch.cat(feats) if feats else torch.zeros(0, W, device=input_ids.device)

    # --- training (auxiliary-head interface, perception/heads/aux.py) -------------------------
    @staticmethod
    def sample_targets(cfg, s) -> dict:
        """One sample's ground-truth masks as proposals: ``object_masks`` (1, K, side, side) in slot
        order (shuffled; with ``drop_prob`` one left out, kept in a trailing slot marked not valid,
        with ``extra_prob`` one random background box inserted), ``object_valid`` / ``object_is_gt``
        (1, K) bool, ``loc_slots`` (one per <loc>, all turns) the slot of its object or IGNORE, and
        ``turn_match`` (turns, K): per turn that asks for objects (it grounds some, or its task is one
        whose answer may ground none: ``ASKS_FOR_OBJECTS``) 1 on the slots of the objects it grounds,
        0 elsewhere; -1 (no target) on every other turn."""
        from perception.processing import mask_side

        oc, side = cfg.objects, mask_side(cfg)
        rng = s.rng if s.rng is not None else np.random.default_rng(0)
        K = oc.max_objects
        n = min(len(s.sample.masks), K)
        order = [int(k) for k in rng.permutation(n)]
        dropped = [order.pop(int(rng.integers(n)))] if n and rng.random() < oc.drop_prob else []
        entries = [("object", k) for k in order]
        if n < K and rng.random() < oc.extra_prob:
            entries.insert(int(rng.integers(len(entries) + 1)), ("extra", None))
        entries += [("dropped", k) for k in dropped]
        masks = torch.zeros(K, side, side)
        valid, is_gt = torch.zeros(K, dtype=torch.bool), torch.zeros(K, dtype=torch.bool)
        slot_of = {}
        for j, (kind, k) in enumerate(entries):
            if kind == "extra":
                x, y = rng.uniform(0, 0.8, 2)
                w, h = rng.uniform(0.08, 0.25, 2)
                masks[j] = box_mask((x, y, x + w, y + h), side)
            else:
                masks[j] = s.frame.mask_to_model(s.sample.masks[k], side)
                is_gt[j] = True
            valid[j] = kind != "dropped"
            if kind == "object":
                slot_of[k] = j
        loc_slots = torch.tensor([slot_of.get(k, IGNORE) for k in s.loc_objects], dtype=torch.long)
        turn_match = torch.full((len(s.sample.turns), K), -1, dtype=torch.long)
        for t, turn in enumerate(s.sample.turns):
            if turn.targets or turn.task in ASKS_FOR_OBJECTS:
                turn_match[t] = 0
                for k in turn.targets:
                    if k in slot_of:
                        turn_match[t, slot_of[k]] = 1
        return {"object_masks": masks[None], "object_valid": valid[None], "object_is_gt": is_gt[None],
                "loc_slots": loc_slots, "turn_match": turn_match}

    def from_batch(self, mask_head, region_encoder, feats, batch: dict) -> ObjectSet:
        """The collated proposals -> ObjectSet (gradients reach the region encoder). While training,
        each image with probability ``objects.own_proposals`` gets the model's own proposals instead
        (``with_own_proposals``), which is what inference gives the LM."""
        masks, valid = batch["object_masks"].to(feats.pixels.dtype), batch["object_valid"]
        p = self.cfg.objects.own_proposals
        if self.training and p > 0:
            rows = (torch.rand(masks.shape[0]) < p).nonzero().flatten().to(masks.device)
            if len(rows):
                masks, valid = with_own_proposals(self, mask_head, feats, masks, valid, batch["object_is_gt"], rows)
        return self.from_masks(region_encoder, feats, masks, valid)

    def loss(self, x, batch: dict) -> dict:
        """{"pointer": cross-entropy of every <loc> with a target slot, "proposal": centre focal loss}."""
        from perception.model import perception_states

        out = {}
        states, bidx, pos = perception_states(x.hidden, x.input_ids, x.loc_id)
        target = batch["loc_slots"]
        keep = target != IGNORE
        if bool(keep.any()):
            obj = turn_object_states(x.hidden, x.input_ids, x.object_id, self.k, bidx[keep], pos[keep])
            feats = None if x.score_features is None else turn_object_states(x.score_features, x.input_ids, x.object_id, self.k, bidx[keep], pos[keep])
            logits = self.scores(states[keep], obj, x.state.objects.valid[bidx[keep]], feats)
            out["pointer"] = F.cross_entropy(logits, target[keep])
        heat = self.proposal_head(x.state.mask.pixels)  # (B, h, w)
        gt = batch["object_masks"] * batch["object_is_gt"][..., None, None]
        target_map = torch.stack([centre_heatmap(g[g.flatten(1).amax(1) > 0], heat.shape[-2:], self.cfg.objects.heatmap_sigma)
                                  for g in gt])
        out["proposal"] = centre_focal_loss(heat, target_map)
        if self.match is not None:
            out["match"] = self.match_loss(x, batch)
        return out

    def match_logits(self, hidden, input_ids, labels, object_id: int, valid, features=None):
        """Every turn's match scores: hidden (B, T, D) last-layer states, input_ids / labels (B, T),
        valid (B, K) the images' proposal slots, features (B, T, F) or None (``score_features``)
        -> (logits (turns, K), valid (turns, K)), the batch's turns in order. Each turn has K
        ``<obj>`` ids; its decision state is the last position before its answer (``decision_positions``)."""
        is_obj = input_ids == object_id
        states = hidden[is_obj].view(-1, self.k, hidden.shape[-1])  # (turns, K, D), row-major
        rows = turn_rows(is_obj, self.k)
        feats = None if features is None else features[is_obj].view(-1, self.k, features.shape[-1])
        logits = self.match_scores(hidden[rows, decision_positions(is_obj, labels, self.k)], states, feats)
        return logits, valid[rows]

    def match_loss(self, x, batch: dict):
        """Mean BCE of the match scores (``match_logits``) over the object tokens of every turn that
        asks for objects (``turn_match`` >= 0) and holds a proposal."""
        logits, valid = self.match_logits(x.hidden, x.input_ids, x.labels, x.object_id, x.state.objects.valid, x.score_features)
        target = batch["turn_match"].to(logits.device)
        if target.shape[0] != logits.shape[0]:
            raise ValueError(f"{target.shape[0]} turns have match targets but the prompts hold {logits.shape[0]} turns of object tokens")
        keep = (target >= 0) & valid
        if not bool(keep.any()):
            return None
        return F.binary_cross_entropy_with_logits(logits[keep], target[keep].float())


class MatchScore(nn.Module):
    """Whether a turn asks for each object: a bilinear score between the turn's decision state (the
    last prompt position, whose logits start the answer) and each of its object tokens' states
    (last layer), as the pointer scores ``<loc>`` states. The decision state is also the one that
    chooses between grounding and "there is none", so it must carry what the scores say."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.query = nn.Linear(dim, width)
        self.key = nn.Linear(dim, width)

    def forward(self, decision: torch.Tensor, object_states: torch.Tensor) -> torch.Tensor:
        """decision (N, D), object_states (N, K, D) -> (N, K) logits."""
        q, k = self.query(decision.float()), self.key(object_states.float())
        return torch.einsum("np,nkp->nk", q, k) / math.sqrt(q.shape[-1])


def decision_positions(is_obj: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T) ``<obj>`` mask and labels -> (turns,) the position, in its row, of each turn's decision
    state: the one before the first answer token (label != IGNORE) after the turn's object tokens.
    Rows in order, turns in order."""
    out = []
    for b in range(is_obj.shape[0]):
        ends = is_obj[b].nonzero().flatten().view(-1, k)[:, -1].contiguous()  # the turn's last <obj>
        answer = (labels[b] != IGNORE).nonzero().flatten()
        first = answer[torch.searchsorted(answer, ends, right=True).clamp(max=len(answer) - 1)]
        if len(answer) == 0 or bool((first <= ends).any()):
            raise ValueError(f"row {b}: a turn's object tokens have no answer after them")
        out.append(first - 1)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def proposal_quality(model, samples: list, threshold: float = 0.5) -> dict:
    """The proposal step measured on ``samples`` (perception.data Samples with ground-truth masks):
    {"recall": objects matched by a proposal at mask IoU >= threshold / objects, "matched_miou":
    mean IoU of the matched pairs, "proposals_per_image", "objects"}. Masks are compared in
    input-image pixels, after the proposals' masks are mapped back through each image's frame."""
    from perception.geometry import ImageFrame

    cfg = model.config
    found, ious, n_props, n_objs = 0, [], 0, 0
    for s in samples:
        frame = ImageFrame(*s.image.size, cfg.backbone.image_size, cfg.backbone.resize_mode)
        state = model.encode_images(model.backbone.preprocess(s.image)[None].to(model.device), propose=False)
        objs = model.object_tokens.propose(model.mask_head, model.region_encoder, state.mask)
        keep = objs.valid[0].nonzero().flatten()
        props = [objs.pixel_mask(0, j, frame, cfg.mask_head.mask_threshold) for j in keep.tolist()]
        _, pair_ious = proposal_recall(props, list(s.masks), threshold)
        found, ious = found + len(pair_ious), ious + pair_ious
        n_props, n_objs = n_props + len(props), n_objs + len(s.masks)
    return {"recall": found / max(1, n_objs), "matched_miou": float(np.mean(ious)) if ious else 0.0,
            "proposals_per_image": n_props / max(1, len(samples)), "objects": n_objs}
