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

import json
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    decoded: int  # objects decoded: every <loc> (also one that grounded nothing, e.g. with random weights), or text box
    steps: int  # tokens emitted by the generation loop (the final </s> included)


def time_answer(pipe, image, question: str, answer: str) -> Timed:
    """Produce ``answer`` to a fresh one-turn ``question`` end to end and time it.

    The image features are computed (or found in the pipeline's cache) before the clock starts, as
    in a chat about an uploaded image. Timed: encoding the prompt, ``generate(..., forced=ids)``
    (the real loop: prefill, one KV-cache step per token, greedy scoring, ``<loc>`` feedback), and
    decoding the answer's objects (each ``<loc>`` once, as generation writes it, or boxes parsed
    from the text: ``perception.decoding.answer_decoder``).
    """
    import torch

    from perception.decoding import answer_decoder
    from perception.generation import generate

    model = pipe.model
    prompts = model.prompts
    forced = answer_ids(prompts, answer)
    _, (frame, state) = pipe._prepare(image)
    t0, c0 = time.perf_counter(), time.process_time()
    enc = prompts.encode([(question, None)], add_generation_prompt=True)
    ids = torch.tensor([enc.input_ids], device=pipe.device)
    decoder = answer_decoder(model, state, frame, max_objects=pipe.limits.max_objects)
    new_ids = list(generate(model, state, ids, None, len(forced), pipe.limits.max_objects, forced=forced, decoder=decoder))
    objects = decoder.objects(pipe._decode(new_ids))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if new_ids != forced:
        raise RuntimeError(f"the generation loop emitted {len(new_ids)} tokens, not the {len(forced)} forced ones")
    return Timed(seconds, cpu, objects, len(getattr(decoder, "decoded", objects)), len(new_ids))


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


def profile_arguments(doc: str, quick_help: str, files: str, results: Path, quick_out: Path):
    """The command line every benchmark here shares: ``--quick`` (a smoke profile) and ``--out``
    (default: ``results``, the committed full-run folder; ``quick_out``, a temporary folder, with
    ``--quick``, so a smoke run never replaces measured results). Returns (parser, out_of) where
    ``out_of(args)`` creates and returns the output folder."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", default=None, help=f"folder for {files} (default: {results} for the full profile, "
                                                f"{quick_out} with --quick)")

    def out_of(a) -> Path:
        out = Path(a.out) if a.out else (quick_out if a.quick else results)
        out.mkdir(parents=True, exist_ok=True)
        return out

    return ap, out_of


def write_report(report: dict, json_path: Path, png_path: Path, plot, table: str) -> None:
    """The report as JSON, its plot (``plot(report, png_path)``) as PNG, then the table and where they went."""
    json_path.write_text(json.dumps(report, indent=1, allow_nan=True))
    plot(report, png_path)
    print(table)
    print(f"\nwrote {json_path} and {png_path} ({report['wall_seconds']:.0f} s)")
