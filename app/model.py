"""The one model of the app: loaded lazily, once, by ``get_pipeline()``; GPU-wrapped calls.

Nothing is loaded or downloaded at import time. ``configure()`` (from the command line, or the
PERCEPTION_MODEL / PERCEPTION_DEVICE / PERCEPTION_MAX_BATCH environment variables) picks the model
and the batch size before the first call. ``chat`` (the ``/chat`` endpoint) answers the requests
that arrive together in one ``Pipeline.chat_batch`` call (app/batching.py), at most ``max_batch``
of them; 1 is unbatched serving. When the ``spaces`` package is importable (Hugging Face
ZeroGPU), only the model calls (``stream_chat``, the batched answers, ``segment_point``) are
wrapped in ``spaces.GPU``.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings

import perception

from app.batching import Batcher

log = logging.getLogger(__name__)

_settings = {
    "model": os.environ.get("PERCEPTION_MODEL", "tiny"),
    "device": os.environ.get("PERCEPTION_DEVICE", "auto"),
    "max_batch": os.environ.get("PERCEPTION_MAX_BATCH", "16"),
}

try:  # ZeroGPU on Hugging Face Spaces; a no-op everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the environment
    def gpu(fn):
        return fn


def configure(model: str | None = None, device: str | None = None, max_batch: int | None = None) -> None:
    """Choose the model (preset, folder or hub id), device and the most ``/chat`` requests answered
    together (1: one at a time); drops an already loaded model."""
    if model is not None:
        _settings["model"] = model
    if device is not None:
        _settings["device"] = device
    if max_batch is not None:
        _settings["max_batch"] = max_batch
    get_pipeline.cache_clear()
    _batcher.cache_clear()


def settings() -> dict:
    return dict(_settings)


def max_batch() -> int:
    """The most ``/chat`` requests answered in one batch (PERCEPTION_MAX_BATCH, --max-batch-size)."""
    value = _settings["max_batch"]
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"the batch size (PERCEPTION_MAX_BATCH or --max-batch-size) must be an integer >= 1; "
                         f"got {value!r}")
    return n


@functools.lru_cache(maxsize=1)
def get_pipeline() -> perception.Pipeline:
    """The shared pipeline (thread-safe inside: it serialises model calls with a lock)."""
    name, device = _settings["model"], _settings["device"]
    log.info("loading model %r on %s", name, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = perception.load_pipeline(name, device=device)
    for w in caught:  # e.g. "no trained checkpoint": say it once in the server log
        log.warning("%s", w.message)
    return pipe


@gpu
def stream_chat(image, message: str, history: list, regions: list):
    """Yield the growing answer text, then the final perception.Answer."""
    yield from get_pipeline().stream_chat(image, message, history=history, regions=regions)


@gpu
def _answer_batch(requests: list) -> list:
    """[(image, message, history, regions)] -> [perception.Answer], one per request, in order."""
    pipe = get_pipeline()
    if len(requests) == 1:  # chat's own error messages (chat_batch's name the request's index)
        return [pipe.chat(*requests[0])]
    images, messages, histories, regions = (list(col) for col in zip(*requests))
    return pipe.chat_batch(images, messages, histories=histories, regions=regions)


@functools.lru_cache(maxsize=1)
def _batcher() -> Batcher:
    return Batcher(_answer_batch, max_batch())


def chat(image, message: str, history: list, regions: list) -> perception.Answer:
    """One request's answer, computed together with the requests that arrive with it (at most
    ``max_batch()``); a failure is raised in the caller of the request that caused it only."""
    return _batcher().submit((image, message, history, regions))


@gpu
def segment_point(image, point):
    """(x, y) pixel -> H x W bool mask of the object there."""
    return get_pipeline().segment_point(image, point)


def limits() -> perception.Limits:
    """The limits the app enforces (those of the pipeline, without loading it)."""
    return perception.DEFAULT_LIMITS
