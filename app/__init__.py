"""The Gradio demo of PerceptionGPT: ``build_app()`` -> gr.Blocks, ``launch(demo)``, ``main()`` (app.py).

Only the public ``perception`` API is used: names exported by ``perception/__init__.py``, never
``perception.<module>`` (tests/test_app.py checks). The example scenes are drawn by docs/make_examples.py.
The model is loaded lazily by app.model.get_pipeline() on the first request, never at import.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import logging  # noqa: E402

from app.ui import build_app, launch  # noqa: E402

__all__ = ["build_app", "launch", "main"]


def main(argv=None) -> None:
    """``python app.py [--model tiny|PATH|hub-id] [--device auto|cpu|cuda] [--max-batch-size N]``.

    Serves on http://127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise.
    """
    from app import model
    from app.allocator import limit_malloc_arenas

    limit_malloc_arenas()  # before the model and Gradio's worker threads allocate
    p = argparse.ArgumentParser(description="PerceptionGPT chat demo (Gradio)")
    p.add_argument("--model", default=model.settings()["model"],
                   help="preset name (tiny), checkpoint folder or Hugging Face hub id (default: %(default)s)")
    p.add_argument("--device", default=model.settings()["device"], choices=["auto", "cpu", "cuda"],
                   help="where the model runs (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="the most /chat requests answered together in one batch; 1 answers them one at a time "
                        f"(default: PERCEPTION_MAX_BATCH or {model.settings()['max_batch']})")
    args = p.parse_args(argv)
    if args.max_batch_size is not None and args.max_batch_size < 1:
        p.error(f"--max-batch-size must be at least 1; got {args.max_batch_size}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model.configure(args.model, args.device, args.max_batch_size)
    launch(build_app())
