"""Greedy decoding with a KV cache, yielding tokens as they come, and collecting the hidden states
that ``perception_states`` reads (the same function training uses)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Generated:
    ids: torch.Tensor  # (1, T + n) prompt + generated ids
    hidden: torch.Tensor  # (1, T + n, D) last-layer hidden state per position (zeros where never computed)
    prompt_len: int


def _feedback(model, state, h, claimed):
    """(1, D) state that predicted a <loc> -> ((1, 1, D), claimed): the grounded object's mask (the
    blob around the most confident pixel, as the pipeline reports it) through
    ``model.feedback_embeds``. claimed: (h, w) bool pixels earlier <loc>s of this answer took (None
    at the first); with ``mask_head.exclusive`` they are out of this blob's reach."""
    from perception.geometry import blob_around_peak

    bidx = torch.zeros(1, dtype=torch.long, device=h.device)
    prob = model.mask_head.from_states(state.mask, h, bidx).sigmoid()[0].float().cpu().numpy()
    if claimed is None:
        claimed = np.zeros(prob.shape, bool)
    if model.config.mask_head.exclusive:
        prob = np.where(claimed, 0.0, prob)
    blob = blob_around_peak(prob, model.config.mask_head.mask_threshold)
    mask = torch.from_numpy(blob).to(device=h.device, dtype=state.mask.pixels.dtype)[None]
    return model.feedback_embeds(state, mask, bidx)[:, None], claimed | blob


@torch.no_grad()
def generate(model, state, input_ids: torch.Tensor, region_embeds, max_new_tokens: int, max_objects: int,
             forced: list | None = None):
    """Yield each new token id; the generator's return value (StopIteration.value) is a Generated.

    Greedy (deterministic). Never emits <image>, <region>, <s> or <pad>; stops emitting <loc>
    after ``max_objects``; stops at </s> or after ``max_new_tokens``.

    forced: token ids to emit instead of the greedy choice (benchmarks time a reference answer
    through this same loop); every other step -- the greedy scoring, <loc> feedback, the KV
    cache -- runs as usual. Generation stops at the end of ``forced``.
    """
    p = model.prompts
    emb = model.embed(input_ids, state, region_embeds)
    logits, hidden, past = model.backbone.forward_embeds(emb, use_cache=True)
    hiddens = [hidden[0]]
    ids = input_ids[0].tolist()
    T = len(ids)
    banned = [t for t in (p.image_id, p.region_id, model.tokenizer.bos_token_id, model.tokenizer.pad_token_id) if t is not None]
    n_obj = 0
    claimed = None  # pixels this answer's <loc>s took (model frame)
    for _ in range(max_new_tokens):
        scores = logits[0, -1].float().clone()
        scores[banned] = float("-inf")
        if n_obj >= max_objects:
            scores[p.loc_id] = float("-inf")
        nxt = int(scores.argmax())
        if forced is not None:
            if len(ids) - T >= len(forced):
                break
            nxt = int(forced[len(ids) - T])
        ids.append(nxt)
        yield nxt
        if nxt == p.eos_id:
            break
        n_obj += nxt == p.loc_id
        tok = torch.tensor([[nxt]], device=input_ids.device)
        emb = model.backbone.embed_tokens(tok)
        if nxt == p.loc_id and model.config.loc_feedback:
            fb, claimed = _feedback(model, state, hiddens[-1][-1:], claimed)
            emb = emb + fb.to(emb.dtype)
        logits, hidden, past = model.backbone.forward_embeds(emb, past_key_values=past, use_cache=True)
        hiddens.append(hidden[0])
    h = torch.cat(hiddens, 0)
    if h.shape[0] < len(ids):
        h = torch.cat([h, h.new_zeros(len(ids) - h.shape[0], h.shape[1])], 0)
    return Generated(torch.tensor([ids], device=input_ids.device), h[None], T)
