"""Answer objects: each perception token decoded once, during generation.

``ObjectDecoder`` turns the last-layer state that predicted a ``<loc>`` (perception_states' rule:
the state at t - 1) into the object the answer reports -- its mask, box and score in input-image
pixels -- and, for models with ``loc_feedback``, into the embedding added to that ``<loc>``'s input
before the next step. The mask fed back is the mask reported, so later tokens know exactly which
object was grounded. With ``mask_head.exclusive`` each ``<loc>`` of an answer takes its pixels
from those no earlier ``<loc>`` of the answer took.

Object-token models (``objects.enabled``, perception/objects.py) choose instead of drawing
(``PointerDecoder``): the pointer scores the current turn's object tokens (their states come from
``see_prompt``, which generation calls once with the prompt's last-layer states), the best
proposal no earlier ``<loc>`` of the answer chose is the object (its mask and the mask's box), and
``Grounding.score`` is the pointer's probability. That mask is what feedback feeds back. With
``objects.match_gate`` a ``<loc>`` chooses only among the proposals the match scores (the turn's
decision state against each object token) say the turn asks for, and when they say none is, the
answer may not start by grounding (``banned_first``): "there is none" and the choice come from
the same scores -- unless the LM is sure the turn asks for an object (``objects.sure_gate``: its
probability of starting by grounding; ``objects.region_sure_gate`` on a turn that names a
region), when the gate yields for that answer. ``objects.list_gate``
/ ``list_doubt`` / ``list_sure`` keep a listing going while the scores say asked-for objects are
left, and ``objects.list_stop`` ends it when no object is left to ground (``banned_next``).

No placeholder objects: a ``<loc>`` whose mask has fewer than ``mask_head.min_object_pixels``
pixels above ``mask_threshold`` (after the exclusive claim) grounds nothing -- it is dropped from
the answer's objects, claims no pixels and feeds nothing back. An answer may so ground nothing
(``Answer.objects == []``). ``Grounding.score`` is the mask's peak probability: the head's
confidence that the object is there, comparable across objects and answers (sort by it).

Generation calls the decoder once per ``<loc>`` (perception.generation); the pipeline pairs the
decoded objects with the answer's phrases (``objects``). ``answer_decoder`` picks the decoder for a
model's output mode (the text-box baseline reads its boxes from the text instead:
perception/baseline.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from perception.geometry import ImageFrame, blob_around_peak, box_from_mask
from perception.objects import turn_names_region, turn_object_states
from perception.tokens import PHRASE_OPEN, parse_answer
from perception.types import Grounding


class ObjectDecoder:
    """Decodes the ``<loc>`` states of one answer about one image.

    model: a PerceptionModel; state: its ImageState for a batch holding the image at row ``bidx``;
    frame: the ImageFrame mapping that image to the model frame. ``decoded`` holds one Grounding
    (phrase None), or None for a dropped one, per ``<loc>`` so far, in order.
    """

    def __init__(self, model, state, frame: ImageFrame, bidx: int = 0):
        self.model = model
        self.state = state
        self.frame = frame
        self.decoded: list[Grounding] = []
        self._bidx = torch.tensor([bidx], dtype=torch.long, device=state.mask.pixels.device)
        self._claimed = np.zeros((frame.height, frame.width), bool)  # pixels earlier <loc>s took

    def see_prompt(self, input_ids: torch.Tensor, hidden: torch.Tensor, region_embeds=None) -> None:
        """The prompt's ids (T,), last-layer states (T, D) and region embeddings (RegionEmbeds) or None, once
        before the first ``<loc>`` (generation calls it for every decoder); this decoder needs none."""

    def banned_first(self) -> list:
        """Token ids the answer may not start with (generation asks after ``see_prompt``): none here."""
        return []

    def banned_next(self, answer: list, logits: torch.Tensor) -> list:
        """Token ids the answer may not write next, given its ids so far (``answer``) and the LM's
        (V,) logits for the next one (generation asks at every step): ``banned_first`` for the first
        token, nothing after."""
        return [] if answer else self.banned_first()

    @torch.no_grad()
    def __call__(self, loc_state: torch.Tensor):
        """(1, D) state that predicted a ``<loc>`` -> the (1, D) embedding to add to that ``<loc>``'s
        input (None when the model does not feed back). Records the decoded object."""
        cfg = self.model.config
        logits, box_norm = self.model.decode_states(self.state, loc_state, self._bidx)
        prob = self.frame.logits_to_pixels(logits).sigmoid()[0].cpu().numpy()
        if cfg.mask_head.exclusive:
            prob = np.where(self._claimed, 0.0, prob)
        thr = cfg.mask_head.mask_threshold
        if cfg.box_head.source == "mask":  # the blob around the most confident pixel: stray pixels elsewhere do not count
            mask = blob_around_peak(prob, thr)
            box = box_from_mask(mask)
        else:  # "head": the paper's MLP on the state
            mask = prob >= thr
            box = tuple(self.frame.boxes_to_pixels(box_norm[0].float().cpu().numpy()).tolist())
        if not self._keep(mask, box, float(prob[mask].max()) if mask.any() else 0.0):
            return None
        self._claimed |= mask
        if not cfg.loc_feedback:
            return None
        fed = self.frame.mask_to_model(mask, logits.shape[-1]).to(device=logits.device, dtype=self.state.mask.pixels.dtype)
        return self.model.feedback_embeds(self.state, fed[None], self._bidx)

    def _keep(self, mask, box, score: float) -> bool:
        """Record the object (True), or None for a ``<loc>`` whose mask is too small to be one (False)."""
        if int(mask.sum()) < self.model.config.mask_head.min_object_pixels:  # nothing there: no placeholder object
            self.decoded.append(None)
            return False
        self.decoded.append(Grounding(box=tuple(float(v) for v in box), mask=mask, score=score))
        return True

    def objects(self, raw: str) -> list[Grounding]:
        """The answer's objects, each paired with the ``<p>phrase</p>`` its ``<loc>`` follows
        (``parse_answer``'s pairing, by ``<loc>`` order; None when a ``<loc>`` has no phrase).
        A dropped ``<loc>`` drops its pairing too: its phrase stays in the text, with no object."""
        phrases = parse_answer(raw).phrases
        return [dataclasses.replace(g, phrase=phrases[k] if k < len(phrases) else None)
                for k, g in enumerate(self.decoded) if g is not None]


class PointerDecoder(ObjectDecoder):
    """Object-token models: each ``<loc>`` chooses one of the image's proposals (``state.objects``)
    by the pointer over the current turn's ``<obj>`` states; a proposal is chosen once per answer."""

    def __init__(self, model, state, frame: ImageFrame, bidx: int = 0):
        super().__init__(model, state, frame, bidx)
        self._pointer = model.object_tokens
        self._object_states = None  # (K, D) the current turn's object-token states (see_prompt)
        self._chosen = torch.zeros(model.config.objects.max_objects, dtype=torch.bool, device=self._bidx.device)
        self._nothing_asked = False  # match_gate: the match scores ask for no proposal (see_prompt)
        self._gated = None  # (K,) bool: the proposals match_gate ruled out (see_prompt)
        self._match = None  # (K,) the turn's match probabilities (see_prompt; None without match scores)
        self._features = None  # (K, F) the turn's object tokens' score features (see_prompt; ObjectTokens.score_features)
        self._names_region = False  # the turn names a region (see_prompt): objects.region_sure_gate applies
        p = model.prompts
        ends = [model.tokenizer.convert_tokens_to_ids(t) for t in (":", ".")]
        self._list_ends = [p.eos_id] + [t for t in ends if t is not None and t != model.tokenizer.unk_token_id]

    def see_prompt(self, input_ids: torch.Tensor, hidden: torch.Tensor, region_embeds=None) -> None:
        """Keep the states of the last turn's ``<obj>`` tokens for the pointer (and, for a model whose
        scores read features, those: ``ObjectTokens.score_features``)."""
        T, row = torch.tensor([input_ids.shape[0]]), torch.zeros(1, dtype=torch.long)
        oid = self.model.prompts.object_id
        self._object_states = turn_object_states(hidden[None], input_ids[None], oid, self._pointer.k, row, T)[0]
        self._names_region = turn_names_region(input_ids, oid, self.model.prompts.region_id, self._pointer.k)
        if self._pointer.score_weights is not None:  # objects.relation_scores / position_scores
            feats = self.model.object_score_features(input_ids[None], self.state.objects.select(self._bidx.view(1)), region_embeds)
            self._features = turn_object_states(feats, input_ids[None], oid, self._pointer.k, row, T)[0]
        gate = self.model.config.objects.match_gate
        if self._pointer.match is not None:
            feats = None if self._features is None else self._features[None]
            self._match = self._pointer.match_scores(hidden[-1:], self._object_states[None], feats)[0].sigmoid().to(self._chosen.device)
        if gate > 0 and self._match is not None:  # objects the turn does not ask for are never chosen
            self._gated = ~(self._match >= gate)
            self._chosen |= self._gated
            self._nothing_asked = not bool(self._open().any())

    def banned_first(self) -> list:
        """With ``objects.match_gate``, when no proposal is asked for, the answer may not start by
        grounding (``<p>`` or ``<loc>``): "there is none" comes from the same scores as the choice."""
        if not self._nothing_asked:
            return []
        return self._grounding()

    def _grounding(self) -> list:
        """The token ids an answer starts grounding with: ``<p>`` and ``<loc>``."""
        p = self.model.prompts
        return [p.special[PHRASE_OPEN], p.loc_id]

    def banned_next(self, answer: list, logits: torch.Tensor) -> list:
        """``banned_first`` for the first token (after ``objects.sure_gate``: where the match gate
        ruled out every proposal and the LM gives starting by grounding at least that, the gate
        yields and nothing is banned; on a turn that names a region ``objects.region_sure_gate``
        instead, where set). With ``objects.list_gate``, right after a ``<loc>`` the
        answer may not end (``</s>``, ":" or ".") while a proposal it has not grounded has a match
        probability of at least the gate and the LM itself gives going on at least
        ``objects.list_doubt``: a listing stops when the match scores say nothing asked for is
        left, not earlier; an answer the LM is sure is complete (one object asked for) still ends
        -- unless a proposal left scores at least ``objects.list_sure``, whatever the LM gives. With
        ``objects.list_stop``, right after a ``<loc>`` with no proposal left that a ``<loc>`` may
        choose, the answer may only end: another object would ground nothing."""
        oc = self.model.config.objects
        if not answer:
            sure = oc.sure_gate if not self._names_region or oc.region_sure_gate is None else oc.region_sure_gate
            if self._nothing_asked and sure > 0 and _share(logits, self._grounding()) >= sure:
                self._chosen &= ~self._gated  # the LM is sure the turn asks for an object: the gate yields
                self._nothing_asked = False
            return self.banned_first() or self._must_ground(oc, logits)
        if self._match is None or answer[-1] != self.model.prompts.loc_id:
            return []
        if oc.list_stop and not bool(self._open().any()):  # nothing left to ground: the listing ends
            return _all_but(logits, self._list_ends)
        if oc.list_sure > 0 and bool(self._open(oc.list_sure).any()):
            return self._list_ends
        if oc.list_gate <= 0 or not bool(self._open(oc.list_gate).any()):
            return []
        going_on = 1.0 - _share(logits, self._list_ends)
        return self._list_ends if going_on >= oc.list_doubt else []

    def _must_ground(self, oc, logits: torch.Tensor) -> list:
        """``objects.start_gate``: every first token but ``<p>`` and ``<loc>`` when a proposal scores
        at least the gate and the LM itself gives starting by grounding at least ``list_doubt``
        (an answer that asks for no object -- a region question -- stays the LM's)."""
        if oc.start_gate <= 0 or self._match is None:
            return []
        ground = self._grounding()
        if not bool(self._open(oc.start_gate).any()) or _share(logits, ground) < oc.list_doubt:
            return []
        return _all_but(logits, ground)

    def _open(self, gate: float | None = None) -> torch.Tensor:
        """(K,) bool: the proposals a ``<loc>`` of this answer may still take (valid, not chosen,
        not ruled out by the match gate), and with ``gate`` only those whose match probability is
        at least it."""
        left = self.state.objects.valid[int(self._bidx)] & ~self._chosen
        return left if gate is None else left & (self._match >= gate)

    @torch.no_grad()
    def __call__(self, loc_state: torch.Tensor):
        """The pointer's best proposal not chosen yet is the object."""
        if self._object_states is None:
            raise RuntimeError("an object-token model's decoder needs the prompt's states: call see_prompt before a <loc>")
        objs, b = self.state.objects, int(self._bidx)
        valid = self._open()
        if not bool(valid.any()):  # every proposal is taken: nothing left to ground
            self.decoded.append(None)
            return None
        feats = None if self._features is None else self._features[None]
        scores = self._pointer.scores(loc_state, self._object_states[None], valid[None], feats)[0]
        j = int(scores.argmax())
        mask = objs.pixel_mask(b, j, self.frame, self.model.config.mask_head.mask_threshold)
        if not self._keep(mask, box_from_mask(mask), float(scores.softmax(-1)[j])):
            return None
        self._chosen[j] = True
        if not self.model.config.loc_feedback:
            return None
        return self.model.feedback_embeds(self.state, objs.masks[b, j][None], self._bidx)


def _all_but(logits: torch.Tensor, ids: list) -> list:
    """Every token id of the vocabulary (``logits``' last dimension) but ``ids``."""
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool)
    keep[ids] = True
    return (~keep).nonzero().flatten().tolist()


def _share(logits: torch.Tensor, ids: list) -> float:
    """The LM's probability, from (V,) next-token logits, that the next token is one of ``ids``."""
    return float(logits.float().softmax(-1)[ids].sum())


def answer_decoder(model, state, frame: ImageFrame, bidx: int = 0, max_objects: int | None = None):
    """The decoder for ``model``'s output: ``ObjectDecoder``, ``PointerDecoder`` for object-token
    models (when the image state carries proposals and ``objects.selection`` is "pointer"; "mask"
    lets their ``<loc>`` states draw, the ablation without the pointer), or the text-box baseline's."""
    if model.config.output_mode == "text_box":
        from perception.baseline import TextBoxDecoder

        return TextBoxDecoder(frame, max_objects)
    if getattr(model, "object_tokens", None) is not None and getattr(state, "objects", None) is not None:
        selection = model.config.objects.selection
        if selection == "pointer":
            return PointerDecoder(model, state, frame, bidx)
        if selection != "mask":
            raise ValueError(f"objects.selection must be 'pointer' or 'mask'; got {selection!r}")
    return ObjectDecoder(model, state, frame, bidx)
