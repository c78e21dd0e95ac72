"""One limits config, read by the Python API and the app. Defaults are documented in the README."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = 16_000_000  # width x height of an input image (4000 x 4000); larger is rejected before decoding
    max_upload_bytes: int = 20 * 1024 * 1024  # app upload size limit
    max_prompt_chars: int = 2000  # characters of one user message
    max_regions: int = 8  # regions referred to in one message
    max_history_turns: int = 6  # earlier turns kept as context (older ones are dropped; the image stays)
    max_new_tokens: int = 96  # generated tokens per answer
    max_objects: int = 12  # perception tokens (grounded objects) per answer


DEFAULT_LIMITS = Limits()
