"""Requests that arrive together, answered in one call: ``Batcher(fn, max_size).submit(item)``.

Each caller (a Gradio worker thread running one ``/chat`` request) submits its own item and
blocks until its own result comes back, or its own exception is raised in its own thread. One
worker thread takes everything waiting (at most ``max_size`` items, in arrival order) and calls
``fn(items) -> results`` (a list in, a list of the same length out) once for them. While it runs,
new items wait and form the next batch: nothing is held back to wait for company.

Why not Gradio's ``batch=True``: Gradio 6.31 sends one outcome to every event of a batch
(gradio/queueing.py ``process_events``: an exception in the batched function becomes the error of
every request in it), so one bad request would fail the others. Here each request is validated
in its own call before it is submitted, and if ``fn`` fails on several items, each is retried
alone: a failure stays with the request that caused it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

log = logging.getLogger(__name__)

HISTORY = 1000  # batches remembered in Batcher.sizes / .seconds (a server runs for days)


class Batcher:
    """Collects items submitted from many threads and answers them with ``fn`` in batches.

    fn: list of items -> list of results, one per item, in order. max_size: the most items per
    call (1: every item alone, i.e. unbatched serving). The worker thread exists only while items
    are waiting (no idle thread is left behind).
    """

    def __init__(self, fn: Callable[[list], list], max_size: int):
        if not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size (the most requests per batch) must be an integer >= 1; got {max_size!r}")
        self.fn, self.max_size = fn, max_size
        self._lock = threading.Lock()
        self._waiting: list[tuple[Any, Future]] = []
        self._working = False
        self.sizes: deque[int] = deque(maxlen=HISTORY)  # the sizes of the last batches answered (tests)
        self.seconds: deque[float] = deque(maxlen=HISTORY)  # and how long each took

    def submit(self, item):
        """Answer ``item`` in the next batch; returns its result or raises its exception."""
        fut: Future = Future()
        with self._lock:
            self._waiting.append((item, fut))
            start = not self._working
            self._working = True
        if start:
            threading.Thread(target=self._work, name="batcher", daemon=True).start()
        return fut.result()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._working = False
                    return
                batch, self._waiting = self._waiting[: self.max_size], self._waiting[self.max_size :]
            self.sizes.append(len(batch))
            t0 = time.perf_counter()
            outcomes = self._answer([item for item, _ in batch])
            self.seconds.append(time.perf_counter() - t0)
            log.info("answered a batch of %d in %.3f s", len(batch), self.seconds[-1])
            for (_, fut), outcome in zip(batch, outcomes):
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    def _answer(self, items: list) -> list:
        """Results (or the exception) for each item: one call of fn, or one call per item if that fails."""
        try:
            results = self.fn(items)
            if len(results) != len(items):
                raise RuntimeError(f"the batched function returned {len(results)} results for {len(items)} requests")
            return list(results)
        except Exception as e:
            if len(items) == 1:
                return [e]
            log.info("a batch of %d failed (%s: %s); answering each request alone", len(items), type(e).__name__, e)
        out = []
        for item in items:
            try:
                out.append(self.fn([item])[0])
            except Exception as e:
                out.append(e)
        return out
