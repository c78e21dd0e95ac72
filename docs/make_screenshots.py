"""Screenshots of the demo for the README: ``python docs/make_screenshots.py [--model tiny]``.

Launches the app in-process on a free port, drives it with Playwright in Debian's chromium and
writes docs/screenshot_chat.png (an example scene, "Find all the blue objects.") and
docs/screenshot_click.png (one clicked object as <region1>, then "What shape is <region1>?").
Needs the ``playwright`` package (no browser download: it uses /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CHAT_EXAMPLE, CHAT_QUESTION = 0, "Find all the blue objects."
CLICK_EXAMPLE, CLICK_QUESTION = 4, "What shape is <region1>?"


def example_scene(index: int):
    """The ShapesRef scene behind app/examples/ number ``index`` (same seed as docs/make_examples.py)."""
    from make_examples import SEEDS
    from perception.data.shapesref import draw_scene

    return draw_scene(np.random.default_rng(SEEDS[index]))


def pick_example(page, index: int) -> None:
    page.locator("#examples img").nth(index).click()
    page.locator("#image-info").filter(has_text=" px").wait_for(timeout=30_000)
    time.sleep(0.5)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="preset, checkpoint folder or hub id (default: tiny)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs")
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from app import build_app, launch, model
    from app.browser import CHROMIUM, CHROMIUM_ARGS, ask, click_pixel, free_port, pixel_inside, wait_for

    model.configure(args.model, args.device)
    demo = build_app()
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    out = Path(args.out)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#examples img", timeout=30_000)

            pick_example(page, CHAT_EXAMPLE)
            ask(page, CHAT_QUESTION, timeout=120)
            time.sleep(1.0)  # let the overlay images settle
            page.screenshot(path=str(out / "screenshot_chat.png"), full_page=True)

            scene = example_scene(CLICK_EXAMPLE)
            target = max(scene.objects, key=lambda o: o.mask.sum())
            pick_example(page, CLICK_EXAMPLE)
            click_pixel(page, "#image", *pixel_inside(target.mask))
            box = page.locator("#message textarea")
            wait_for(lambda: "<region1>" in box.input_value(), 60, what="<region1> in the message box")
            ask(page, CLICK_QUESTION, timeout=120)
            time.sleep(1.0)
            page.screenshot(path=str(out / "screenshot_click.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {out / 'screenshot_chat.png'} and {out / 'screenshot_click.png'} (clicked: {target.label})")


if __name__ == "__main__":
    main()
