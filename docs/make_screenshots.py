"""Screenshots of the demo for the README: ``python docs/make_screenshots.py [--model tiny]``.

Launches the app in-process on a free port, drives it with Playwright in Debian's chromium and
writes docs/screenshot_chat.png (an example scene, "Find the orange triangle.") and
docs/screenshot_click.png (one clicked object as <region1>, then "What color is <region1>?").
Needs the ``playwright`` package (no browser download: it uses /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
CHAT_EXAMPLE, CHAT_QUESTION = 0, "Find the orange triangle."
CLICK_EXAMPLE, CLICK_QUESTION = 4, "What color is <region1>?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def example_scene(index: int):
    """The ShapesRef scene behind app/examples/ number ``index`` (same seed as app/make_examples.py)."""
    from app.make_examples import SEEDS
    from perception.data.shapesref import draw_scene

    return draw_scene(np.random.default_rng(SEEDS[index]))


def inside(obj) -> tuple[int, int]:
    ys, xs = np.nonzero(obj.mask)
    k = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return int(xs[k]), int(ys[k])


def click_pixel(page, selector: str, x: int, y: int) -> None:
    page.wait_for_function(
        "s => { const i = document.querySelector(s + ' img'); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector, timeout=30_000)
    img = page.locator(f"{selector} img").first
    box = img.bounding_box()
    nw, nh, fit = img.evaluate("e => [e.naturalWidth, e.naturalHeight, getComputedStyle(e).objectFit]")
    scale = min(box["width"] / nw, box["height"] / nh)
    if fit in ("scale-down", "none"):
        scale = min(scale, 1.0) if fit == "scale-down" else 1.0
    ox, oy = (box["width"] - nw * scale) / 2, (box["height"] - nh * scale) / 2
    page.mouse.click(box["x"] + ox + (x + 0.5) * scale, box["y"] + oy + (y + 0.5) * scale)


def pick_example(page, index: int) -> None:
    page.locator("#examples img").nth(index).click()
    page.locator("#image-info").filter(has_text=" px").wait_for(timeout=30_000)
    time.sleep(0.5)


def ask(page, text: str) -> None:
    n = page.locator("#chat .message-row").count()
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()
    page.locator("#answer-status").filter(has_text=f"Answer {n // 2 + 1}:").wait_for(timeout=120_000)
    time.sleep(1.0)  # let images settle


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="preset, checkpoint folder or hub id (default: tiny)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs")
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from app import build_app, launch, model

    model.configure(args.model, args.device)
    demo = build_app()
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    out = Path(args.out)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#examples img", timeout=30_000)

            pick_example(page, CHAT_EXAMPLE)
            ask(page, CHAT_QUESTION)
            page.screenshot(path=str(out / "screenshot_chat.png"), full_page=True)

            scene = example_scene(CLICK_EXAMPLE)
            target = max(scene.objects, key=lambda o: o.mask.sum())
            pick_example(page, CLICK_EXAMPLE)
            click_pixel(page, "#image", *inside(target))
            box = page.locator("#message textarea")
            t = time.time()
            while "<region1>" not in box.input_value() and time.time() - t < 60:
                time.sleep(0.2)
            ask(page, CLICK_QUESTION)
            page.screenshot(path=str(out / "screenshot_click.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {out / 'screenshot_chat.png'} and {out / 'screenshot_click.png'} (clicked: {target.label})")


if __name__ == "__main__":
    main()
