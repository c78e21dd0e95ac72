"""Greedy decoding with a KV cache, yielding tokens as they come; each ``<loc>`` is decoded into its
object once, as it is written (perception.decoding), and fed back when the model does so.

``generate`` runs one prompt; ``generate_batch`` runs several prompts of different lengths
together (left padding, an attention mask and explicit position ids, so each row computes what it
would alone). Both follow the same per-row rules (``_Row``): the greedy choice, the stops and the
``<loc>`` decoding and feedback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Generated:
    ids: torch.Tensor  # (1, T + n) prompt + generated ids
    prompt_len: int  # T
    decoder: object = None  # the answer decoder that saw every <loc> (``decoder.objects(raw)``)
    objects: list = field(default_factory=list)  # one Grounding (phrase None) per generated <loc> that grounded something, in order


class _Row:
    """One answer being generated: its ids, stops and decoder (the rules both loops share).

    Greedy (deterministic). Never emits <image>, <region>, <s> or <pad>, nor a token the decoder
    rules out (``banned_next``: an object-token model whose match scores ask for no object does
    not start grounding, nor ends a listing while asked objects are left); stops emitting <loc>
    after ``max_objects``; done at </s>, after ``max_new_tokens``, or at the end of ``forced``.
    """

    def __init__(self, model, prompt_ids: list, decoder, max_new_tokens: int, max_objects: int, forced=None):
        p = model.prompts
        self.loc_id, self.eos_id = p.loc_id, p.eos_id
        self.banned = [t for t in (p.image_id, p.region_id, model.tokenizer.bos_token_id, model.tokenizer.pad_token_id)
                       if t is not None]
        self.ids, self.prompt_len = list(prompt_ids), len(prompt_ids)
        self.decoder, self.max_new, self.max_objects, self.forced = decoder, max_new_tokens, max_objects, forced
        self.n_obj = 0
        self.done = max_new_tokens <= 0 or (forced is not None and len(forced) == 0)

    def choose(self, logits: torch.Tensor) -> int:
        """(V,) logits of the next position -> the token this row writes (the greedy choice, or the forced one)."""
        scores = logits.float().clone()
        scores[self.banned] = float("-inf")
        banned_next = getattr(self.decoder, "banned_next", None)  # the decoder may rule some out (first token, ends)
        if banned_next is not None:
            scores[banned_next(self.ids[self.prompt_len:], logits)] = float("-inf")
        if self.n_obj >= self.max_objects:
            scores[self.loc_id] = float("-inf")
        nxt = int(scores.argmax())
        if self.forced is not None:
            nxt = int(self.forced[len(self.ids) - self.prompt_len])
        return nxt

    def write(self, nxt: int, last: torch.Tensor):
        """Append ``nxt``; a ``<loc>`` is decoded from ``last`` (1, D), the state that predicted it.
        Returns what the decoder feeds back into that ``<loc>``'s input ((1, D) or None)."""
        self.ids.append(nxt)
        n = len(self.ids) - self.prompt_len
        self.done = nxt == self.eos_id or n >= self.max_new or (self.forced is not None and n >= len(self.forced))
        if nxt != self.loc_id:
            return None
        self.n_obj += 1
        return self.decoder(last)

    def result(self, device) -> Generated:
        return Generated(torch.tensor([self.ids], device=device), self.prompt_len, self.decoder,
                         [g for g in getattr(self.decoder, "decoded", []) if g is not None])


def _step_embeds(model, tokens: list, feedback: list, device) -> torch.Tensor:
    """The next step's (B, 1, D) inputs: each row's token embedding plus its ``<loc>`` feedback (or None)."""
    emb = model.backbone.embed_tokens(torch.tensor([[t] for t in tokens], device=device))
    for b, fb in enumerate(feedback):
        if fb is not None:
            emb[b] = emb[b] + fb.to(emb.dtype)
    return emb


def _default_decoder(model, state):
    from perception.decoding import answer_decoder
    from perception.geometry import ImageFrame

    S = model.config.backbone.image_size
    return answer_decoder(model, state, ImageFrame(S, S, S, model.config.backbone.resize_mode))


@torch.no_grad()
def generate(model, state, input_ids: torch.Tensor, region_embeds, max_new_tokens: int, max_objects: int,
             forced: list | None = None, decoder=None, loc_feedback=None):
    """Yield each new token id; the generator's return value (StopIteration.value) is a Generated.

    input_ids: (1, T). Greedy; the stops are ``_Row``'s.

    decoder: called with the (1, D) state that predicted each ``<loc>`` (perception.decoding);
    what it returns (an embedding, or None) is added to that ``<loc>``'s input. Default: an
    ObjectDecoder in the square model frame (objects in model-frame pixels).

    loc_feedback: the prompt's own ``<loc>`` feedback (``model.embed``'s; the history's answers), or None.

    forced: token ids to emit instead of the greedy choice (benchmarks time a reference answer
    through this same loop); every other step -- the greedy scoring, <loc> decoding and feedback, the
    KV cache -- runs as usual. Generation stops at the end of ``forced``.
    """
    row = _Row(model, input_ids[0].tolist(), decoder or _default_decoder(model, state), max_new_tokens, max_objects, forced)
    emb = model.embed(input_ids, state, region_embeds, loc_feedback)
    logits, hidden, past = model.backbone.forward_embeds(emb, model.lm_attention(input_ids), use_cache=True)
    row.decoder.see_prompt(input_ids[0], hidden[0], region_embeds)  # object-token decoders point at the prompt's <obj> states
    while not row.done:
        nxt = row.choose(logits[0, -1])
        fb = row.write(nxt, hidden[0, -1:])
        yield nxt
        if row.done:
            break
        emb = _step_embeds(model, [nxt], [fb], input_ids.device)
        logits, hidden, past = model.backbone.forward_embeds(emb, past_key_values=past, use_cache=True)
    return row.result(input_ids.device)


@torch.no_grad()
def generate_batch(model, states: list, input_ids: list, region_embeds: list, decoders: list,
                   max_new_tokens: int, max_objects: int, loc_feedback: list | None = None):
    """``generate`` for B prompts at once. Yields, at each step, {row: new token id} for the rows
    still generating; the return value (StopIteration.value) is a list of B Generated, in order.

    states[b]: the ImageState of row b's image (one image); input_ids[b]: (1, T_b) ids;
    region_embeds[b]: row b's RegionEmbeds or None; decoders[b]: row b's answer decoder (required: each row
    decodes its ``<loc>``s against its own image and frame); loc_feedback[b]: row b's prompt
    ``<loc>`` feedback or None (None: none for any row).

    Prompts are left-padded to the longest, with an attention mask (0 on padding) and position ids
    counting only real tokens, so each row attends to and is positioned as alone (the same
    arithmetic, rounded differently in the last bits: Pipeline.chat_batch says where). A row
    that is done stops contributing tokens: it leaves the batch (its KV-cache row is dropped).
    """
    B = len(input_ids)
    if not (len(states) == len(region_embeds) == len(decoders) == B):
        raise ValueError(f"generate_batch: {B} prompts but {len(states)} image states, "
                         f"{len(region_embeds)} region-embedding entries and {len(decoders)} decoders")
    if not getattr(model.backbone, "supports_padded_batch", False):
        raise ValueError(f"batched generation needs position ids the backbone takes as given; "
                         f"{type(model.backbone).__name__} computes its own (generate one prompt at a time)")
    if B == 0:
        return []
    dev = input_ids[0].device
    rows = [_Row(model, ids[0].tolist(), dec, max_new_tokens, max_objects) for ids, dec in zip(input_ids, decoders)]
    loc_feedback = [None] * B if loc_feedback is None else loc_feedback
    embs = [model.embed(ids, st, re, fb) for ids, st, re, fb in zip(input_ids, states, region_embeds, loc_feedback)]
    L = max(e.shape[1] for e in embs)
    emb = torch.cat([torch.nn.functional.pad(e, (0, 0, L - e.shape[1], 0)) for e in embs])  # (B, L, D), left padding
    mask = torch.stack([torch.arange(L, device=dev) >= L - e.shape[1] for e in embs]).long()  # (B, L)
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # (B, L): 0.. over each row's real tokens
    ids = torch.cat([torch.nn.functional.pad(i, (L - i.shape[1], 0), value=-1) for i in input_ids])  # (B, L), -1 on padding
    logits, hidden, past = model.backbone.forward_embeds(emb, model.lm_attention(ids, mask), use_cache=True, position_ids=pos)
    for b, e in enumerate(embs):
        rows[b].decoder.see_prompt(input_ids[b][0], hidden[b, L - e.shape[1]:], region_embeds[b])
    live = list(range(B))  # batch row i of the cache holds answer live[i]
    pos = pos[:, -1:]
    while live:
        step, feedback = {}, []
        for i, b in enumerate(live):
            if rows[b].done:  # allowed no token at all (max_new_tokens <= 0)
                feedback.append(None)
                continue
            step[b] = rows[b].choose(logits[i, -1])
            feedback.append(rows[b].write(step[b], hidden[i, -1:]))
        yield step
        keep = [i for i, b in enumerate(live) if not rows[b].done]
        if not keep:
            break
        if len(keep) < len(live):
            past.batch_select_indices(torch.tensor(keep, device=dev))
            mask, pos = mask[keep], pos[keep]
            feedback = [feedback[i] for i in keep]
            live = [live[i] for i in keep]
        emb = _step_embeds(model, [step[b] for b in live], feedback, dev)
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], 1)
        pos = pos + 1
        logits, hidden, past = model.backbone.forward_embeds(emb, mask, past_key_values=past, use_cache=True, position_ids=pos)
    return [r.result(dev) for r in rows]
