"""Reference answers forced through the real generation loop, for the latency benchmarks.

- ``count_scenes(n, k)``: ShapesRef scenes with exactly n objects matching an "all the ..." question,
  with the reference answer in perception markup (``<p>the red circle</p><loc>, ...``).
- ``reference_answer(sample, config)``: that answer in the model's output mode (text_box: each
  ``<loc>`` becomes ``[x1,y1,x2,y2]``, perception/baseline.py).
- ``time_answer(pipe, image, question, answer)``: wall time of the whole answer -- generation with
  ``generate(..., forced=ids)`` (KV cache, greedy scoring, ``<loc>`` feedback all run) and decoding
  its objects. The only place that knows how an answer is produced: when the generation interface
  changes (objects decoded inside generation), only this function changes.
- ``location_tokens``, ``cache_bytes``: tokens of an answer outside the phrase markup, and the bytes
  of a KV cache's tensors.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

COUNT_SEED = 30_500_000  # where the search for n-match scenes starts


def count_scenes(n: int, k: int, start: int = COUNT_SEED) -> list:
    """``k`` scenes with exactly ``n`` objects matching an "all the ..." question.

    Returns [Sample] (one turn, task ground_all, the reference answer in perception markup): scenes of 6
    requested objects drawn from seeds start, start+1, ...; the question names a shape ("Find all the
    stars") when exactly n objects share it, else a colour ("Show me all the red objects").
    """
    from perception.data.sample import Sample, Turn
    from perception.data.shapesref import draw_scene
    from perception.tokens import grounded

    out, seed = [], start
    while len(out) < k:
        if seed - start > 20_000:
            raise RuntimeError(f"no ShapesRef scene with exactly {n} matching objects in 20000 seeds")
        scene = draw_scene(np.random.default_rng(seed), n_objects=6)
        seed += 1
        objs = scene.objects
        shapes, colors = Counter(o.shape for o in objs), Counter(o.color for o in objs)
        if n in shapes.values():
            key = sorted(s for s, c in shapes.items() if c == n)[0]
            idx, user = [i for i, o in enumerate(objs) if o.shape == key], f"Find all the {key}s"
        elif n in colors.values():
            key = sorted(s for s, c in colors.items() if c == n)[0]
            idx, user = [i for i, o in enumerate(objs) if o.color == key], f"Show me all the {key} objects"
        else:
            continue
        idx = sorted(idx, key=lambda i: (objs[i].cx, objs[i].cy))  # ShapesRef's listing order
        answer = ", ".join(grounded(f"the {objs[i].label}") for i in idx)
        out.append(Sample(image=scene.image, boxes=np.array([o.box for o in objs], np.float32),
                          masks=np.stack([o.mask for o in objs]), labels=[o.label for o in objs],
                          turns=[Turn(user=user, assistant=answer, targets=idx, task="ground_all")],
                          meta={"seed": seed - 1}))
    return out


def reference_answer(sample, config) -> str:
    """The sample's first answer as a model with ``config`` (a PerceptionConfig) writes it."""
    if config.output_mode == "text_box":
        from perception.baseline import to_text_boxes

        return to_text_boxes(sample, config).turns[0].assistant
    return sample.turns[0].assistant


def location_tokens(ids: list, prompts) -> tuple[int, int]:
    """(generated tokens without the final </s>, tokens from each <p> through its </p>, inclusive)."""
    ids = list(ids)
    if ids and ids[-1] == prompts.eos_id:
        ids = ids[:-1]
    p_open, p_close = prompts.special["<p>"], prompts.special["</p>"]
    inside, phrase = False, 0
    for t in ids:
        if t == p_open:
            inside = True
        if inside:
            phrase += 1
        if t == p_close:
            inside = False
    return len(ids), phrase


def answer_ids(prompts, answer: str) -> list:
    """The token ids the model emits for ``answer``, the final </s> included."""
    return prompts.assistant(answer) + [prompts.eos_id]


@dataclass
class Timed:
    seconds: float  # wall time: prompt encoding, generation, decoding the objects
    cpu_seconds: float  # CPU time of this process over the same span (time.process_time, all its threads)
    objects: list  # [Grounding] as Pipeline.chat reports them
    steps: int  # tokens emitted by the generation loop (the final </s> included)


def time_answer(pipe, image, question: str, answer: str) -> Timed:
    """Produce ``answer`` to a fresh one-turn ``question`` end to end and time it.

    The image features are computed (or found in the pipeline's cache) before the clock starts, as
    in a chat about an uploaded image. Timed: encoding the prompt, ``generate(..., forced=ids)``
    (the real loop: prefill, one KV-cache step per token, greedy scoring, ``<loc>`` feedback), and
    decoding the answer's objects (``Pipeline._objects``: masks and boxes, or boxes parsed from text).
    """
    import torch

    from perception.generation import generate
    from perception.tokens import parse_answer

    model = pipe.model
    prompts = model.prompts
    forced = answer_ids(prompts, answer)
    _, (frame, state) = pipe._prepare(image)
    t0, c0 = time.perf_counter(), time.process_time()
    enc = prompts.encode([(question, None)], add_generation_prompt=True)
    ids = torch.tensor([enc.input_ids], device=pipe.device)
    gen = generate(model, state, ids, None, len(forced), pipe.limits.max_objects, forced=forced)
    new_ids = []
    while True:
        try:
            new_ids.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    with torch.no_grad():
        objects = pipe._objects(result, state, frame, parse_answer(pipe._decode(new_ids)).phrases)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if new_ids != forced:
        raise RuntimeError(f"the generation loop emitted {len(new_ids)} tokens, not the {len(forced)} forced ones")
    return Timed(seconds, cpu, objects, len(new_ids))


@contextmanager
def last_cache(model):
    """Within the block, ``box["past"]`` is the KV cache the LM returned last (the cache after an answer)."""
    box = {}
    forward = model.backbone.forward_embeds

    def recording(*args, **kwargs):
        out = forward(*args, **kwargs)
        box["past"] = out[2]
        return out

    model.backbone.forward_embeds = recording  # an instance attribute shadowing the method
    try:
        yield box
    finally:
        del model.backbone.forward_embeds


def cache_bytes(past) -> int:
    """Bytes held by the tensors of a KV cache: a transformers Cache (``.layers`` of keys/values, or
    ``key_cache``/``value_cache`` lists) or nested tuples of tensors. Raises on anything else."""
    import torch

    if past is None:
        return 0
    if isinstance(past, torch.Tensor):
        return past.numel() * past.element_size()
    if isinstance(past, (tuple, list)):
        return sum(cache_bytes(p) for p in past)
    if hasattr(past, "layers"):
        return sum(cache_bytes(getattr(layer, "keys", None)) + cache_bytes(getattr(layer, "values", None))
                   for layer in past.layers)
    if hasattr(past, "key_cache"):
        return cache_bytes(past.key_cache) + cache_bytes(past.value_cache)
    raise TypeError(f"cannot size a KV cache of type {type(past).__name__}")
