"""Keep a long-running server's memory flat: cap glibc's malloc arenas.

Gradio answers each request on one of many worker threads. glibc gives threads their own malloc
arenas (up to 8 per core); tensors of ever-changing sizes (KV caches grow with each answer)
fragment every arena separately, so a server's RSS creeps up under concurrent use. Measured with
``python bench/load_test.py`` (16 users x 60 s, docs/RELIABILITY.md): RSS grew 26 % with the default
arenas and 17 % with two. ``MALLOC_ARENA_MAX`` in the environment, when set, wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_ARENA_MAX = -8  # glibc <malloc.h>
ARENAS = 2


def limit_malloc_arenas(n: int = ARENAS) -> bool:
    """Cap glibc's arenas at ``n`` for threads that allocate from now on. Returns True when applied
    (Linux with glibc and no MALLOC_ARENA_MAX set), False otherwise (nothing changed)."""
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, int(n)))
    except (OSError, AttributeError):  # musl or another libc: no mallopt
        return False
