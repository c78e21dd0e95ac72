"""Batched inference: ``Pipeline.chat_batch`` answers exactly as ``chat`` does one at a time.

On the shipped tiny model, for requests of different prompt lengths (so rows are left-padded by
different amounts), a region question, a two-turn history and answers with several objects: same
text, raw answer, phrases, boxes and masks. The evaluator's ``--batch-size`` gives the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import perception
from perception.pipeline import Pipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "app" / "examples"


@pytest.fixture(scope="module")
def pipe():
    return perception.load_pipeline("tiny", device="cpu")


@pytest.fixture(scope="module")
def images():
    from perception.images import load_image

    return [load_image(EXAMPLES / f"scene_{i}.png") for i in range(6)]


def _requests(pipe, images):
    """(image, message, history, regions) for six varied requests."""
    first = pipe.chat(images[1], "Find the red circle.")
    return [
        (images[0], "Find all the triangles.", None, None),
        (images[1], "What color is it?", first.history, None),  # a two-turn conversation
        (images[2], "What is <region1>?", None, [perception.Region(point=(120, 80))]),
        (images[3], "How many circles are there?", None, None),
        (images[5], "Find the blue square that is to the left of the large green triangle in this picture.", None, None),
        (images[4], "Find all the circles.", None, None),  # the shipped model lists two here
    ]


def _same(a, b) -> bool:
    """Same text, raw answer, history, phrases, boxes and masks. Scores (a mask's peak probability)
    to 1e-6: a decoding step of one row multiplies a vector (GEMV), of several rows a matrix
    (GEMM), and attention over a left-padded prompt sums over more (masked) keys; both round
    differently in the last bits (measured: up to 3e-7 on a score, bench/batch_throughput.py)."""
    return (a.text == b.text and a.raw == b.raw and a.history == b.history and len(a.objects) == len(b.objects)
            and all(o.box == q.box and o.phrase == q.phrase and abs(o.score - q.score) <= 1e-6
                    and np.array_equal(o.mask, q.mask) for o, q in zip(a.objects, b.objects)))


def test_chat_batch_answers_as_chat_one_at_a_time(pipe, images, monkeypatch):
    reqs = _requests(pipe, images)
    single = [pipe.chat(*r) for r in reqs]
    assert max(len(a.objects) for a in single) >= 2, "no request's answer has several objects"
    assert len({len(a.raw) for a in single}) > 1, "every answer has the same length: no row leaves the batch early"

    widths, real = [], pipe.model.backbone.forward_embeds

    def counting(emb, *a, **k):
        widths.append(tuple(emb.shape[:2]))
        return real(emb, *a, **k)

    monkeypatch.setattr(pipe.model.backbone, "forward_embeds", counting)
    fresh = Pipeline(pipe.model)  # an empty feature cache: the batch encodes its images together
    batch = fresh.chat_batch([r[0] for r in reqs], [r[1] for r in reqs], [r[2] for r in reqs], [r[3] for r in reqs])
    assert widths[0][0] == len(reqs), "the prompts were not run as one batch"
    assert len(fresh._cache) == len(reqs), "every image's features should be cached, as chat caches them"
    lens = [len(pipe._prepare_turn(*r, None).input_ids[0]) for r in reqs]
    assert len(set(lens)) > 1 and widths[0][1] == max(lens), "the prompts should have different lengths, padded to the longest"
    for k, (a, b) in enumerate(zip(single, batch)):
        assert _same(a, b), f"request {k} ({reqs[k][1]!r}): chat gave {a.raw!r}, chat_batch {b.raw!r}"


def test_chat_batch_validates_each_request_as_chat(pipe, images):
    with pytest.raises(ValueError, match="2 images, 3 messages"):
        pipe.chat_batch(images[:2], ["Find the star."] * 3)
    with pytest.raises(ValueError, match="request 1: The message has 1 region placeholder"):
        pipe.chat_batch(images[:2], ["Find the star.", "What is <region1>?"])
    with pytest.raises(ValueError, match="request 0: region 1: point .* is outside"):
        pipe.chat_batch(images[:1], ["What is <region1>?"], regions=[[perception.Region(point=(5000, 5))]])
    assert pipe.chat_batch([], []) == []


def test_evaluate_batch_size_gives_the_same_numbers(pipe, monkeypatch):
    from perception.evaluate import evaluate, shapesref_items

    sizes, real = [], pipe.chat_batch

    def recording(images, *a, **k):
        sizes.append(len(images))
        return real(images, *a, **k)

    monkeypatch.setattr(pipe, "chat_batch", recording)
    items = list(shapesref_items(10_000_000, 2, 1))  # one-turn requests between clicks and a conversation
    reps = [evaluate(pipe, items, progress=False, batch_size=b) for b in (1, 4)]
    assert sizes and max(sizes) == 4, f"batch sizes used: {sizes}"
    for r in reps:
        r.pop("latency_ms_median")  # wall time, the one number batching is meant to change
    assert reps[0] == reps[1]


def test_chat_batch_on_the_llava_backbone(tiny_llava_model, images):
    """The LLaVA code path (toy size, random weights) pads and positions rows as the tiny one does."""
    msgs = ["Find all the triangles.", "What is <region1>?", "How many circles are there in this picture?"]
    regs = [None, [perception.Region(point=(120, 80))], None]
    single = [Pipeline(tiny_llava_model).chat(im, m, regions=r, max_new_tokens=12) for im, m, r in zip(images, msgs, regs)]
    pipe = Pipeline(tiny_llava_model)
    assert len({len(pipe._prepare_turn(im, m, None, r, None).input_ids[0]) for im, m, r in zip(images, msgs, regs)}) > 1
    batch = pipe.chat_batch(images[:3], msgs, regions=regs, max_new_tokens=12)
    for a, b in zip(single, batch):
        assert _same(a, b), f"chat gave {a.raw!r}, chat_batch {b.raw!r}"


def test_generate_batch_refuses_a_backbone_that_sets_its_own_positions():
    from types import SimpleNamespace

    from perception.generation import generate_batch

    model = SimpleNamespace(backbone=SimpleNamespace())  # e.g. Qwen2-VL: M-RoPE positions of its own
    with pytest.raises(ValueError, match="SimpleNamespace computes its own"):
        next(generate_batch(model, [], [], [], [], 8, 4))
