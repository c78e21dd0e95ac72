"""Greedy decoding with a KV cache, yielding tokens as they come; each ``<loc>`` is decoded into its
object once, as it is written (perception.decoding), and fed back when the model does so."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Generated:
    ids: torch.Tensor  # (1, T + n) prompt + generated ids
    prompt_len: int  # T
    decoder: object = None  # the answer decoder that saw every <loc> (``decoder.objects(raw)``)
    objects: list = field(default_factory=list)  # one Grounding (phrase None) per generated <loc> that grounded something, in order


@torch.no_grad()
def generate(model, state, input_ids: torch.Tensor, region_embeds, max_new_tokens: int, max_objects: int,
             forced: list | None = None, decoder=None):
    """Yield each new token id; the generator's return value (StopIteration.value) is a Generated.

    Greedy (deterministic). Never emits <image>, <region>, <s> or <pad>; stops emitting <loc>
    after ``max_objects``; stops at </s> or after ``max_new_tokens``.

    decoder: called with the (1, D) state that predicted each ``<loc>`` (perception.decoding);
    what it returns (an embedding, or None) is added to that ``<loc>``'s input. Default: an
    ObjectDecoder in the square model frame (objects in model-frame pixels).

    forced: token ids to emit instead of the greedy choice (benchmarks time a reference answer
    through this same loop); every other step -- the greedy scoring, <loc> decoding and feedback, the
    KV cache -- runs as usual. Generation stops at the end of ``forced``.
    """
    if decoder is None:
        from perception.decoding import answer_decoder
        from perception.geometry import ImageFrame

        S = model.config.backbone.image_size
        decoder = answer_decoder(model, state, ImageFrame(S, S, S, model.config.backbone.resize_mode))
    p = model.prompts
    emb = model.embed(input_ids, state, region_embeds)
    logits, hidden, past = model.backbone.forward_embeds(emb, use_cache=True)
    if hasattr(decoder, "see_prompt"):  # object-token models point at the prompt's object tokens
        decoder.see_prompt(input_ids[0], hidden[0])
    last = hidden[0, -1:]
    ids = input_ids[0].tolist()
    T = len(ids)
    banned = [t for t in (p.image_id, p.region_id, model.tokenizer.bos_token_id, model.tokenizer.pad_token_id) if t is not None]
    n_obj = 0
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
        tok = torch.tensor([[nxt]], device=input_ids.device)
        emb = model.backbone.embed_tokens(tok)
        if nxt == p.loc_id:
            n_obj += 1
            fb = decoder(last)
            if fb is not None:
                emb = emb + fb[:, None].to(emb.dtype)
        logits, hidden, past = model.backbone.forward_embeds(emb, past_key_values=past, use_cache=True)
        last = hidden[0, -1:]
    return Generated(torch.tensor([ids], device=input_ids.device), T, decoder,
                     [g for g in getattr(decoder, "decoded", []) if g is not None])
