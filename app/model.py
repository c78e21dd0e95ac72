"""The one model of the app: loaded lazily, once, by ``get_pipeline()``; GPU-wrapped calls.

Nothing is loaded or downloaded at import time. ``configure()`` (from the command line, or the
PERCEPTION_MODEL / PERCEPTION_DEVICE environment variables) picks the model before the first call.
When the ``spaces`` package is importable (Hugging Face ZeroGPU), only the model calls
(``stream_chat``, ``segment_point``) are wrapped in ``spaces.GPU``.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings

import perception

log = logging.getLogger(__name__)

_settings = {
    "model": os.environ.get("PERCEPTION_MODEL", "tiny"),
    "device": os.environ.get("PERCEPTION_DEVICE", "auto"),
}

try:  # ZeroGPU on Hugging Face Spaces; a no-op everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the environment
    def gpu(fn):
        return fn


def configure(model: str | None = None, device: str | None = None) -> None:
    """Choose the model (preset, folder or hub id) and device; drops an already loaded one."""
    if model is not None:
        _settings["model"] = model
    if device is not None:
        _settings["device"] = device
    get_pipeline.cache_clear()


def settings() -> dict:
    return dict(_settings)


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
def segment_point(image, point):
    """(x, y) pixel -> H x W bool mask of the object there."""
    return get_pipeline().segment_point(image, point)


def limits() -> perception.Limits:
    """The limits the app enforces (those of the pipeline, without loading it)."""
    return perception.DEFAULT_LIMITS
