"""Drive the app in a real browser (Playwright + Debian's chromium, never a downloaded browser).

Shared by the browser test (tests/test_app_browser.py) and docs/make_screenshots.py. Nothing here
imports Playwright: the functions take its ``page``. The element ids are the app's own (app/ui.py).
"""

from __future__ import annotations

import socket
import time

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixel_inside(mask: np.ndarray) -> tuple[int, int]:
    """The (x, y) pixel of a non-empty H x W bool mask nearest to its centroid."""
    ys, xs = np.nonzero(mask)
    k = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return int(xs[k]), int(ys[k])


def click_pixel(page, selector: str, x: int, y: int) -> None:
    """Click image pixel (x, y) of the <img> in selector (object-fit and letterboxing included)."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s + ' img'); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector, timeout=30_000)
    img = page.locator(f"{selector} img").first
    box = img.bounding_box()
    nw, nh, fit = img.evaluate("e => [e.naturalWidth, e.naturalHeight, getComputedStyle(e).objectFit]")
    scale = min(box["width"] / nw, box["height"] / nh)
    if fit in ("scale-down", "none"):  # small images are shown at their natural size, centred
        scale = min(scale, 1.0) if fit == "scale-down" else 1.0
    ox, oy = (box["width"] - nw * scale) / 2, (box["height"] - nh * scale) / 2
    page.mouse.click(box["x"] + ox + (x + 0.5) * scale, box["y"] + oy + (y + 0.5) * scale)


def wait_for(cond, timeout: float = 45.0, what: str = "condition") -> None:
    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ask(page, text: str, timeout: float = 45.0) -> str:
    """Send a message and wait for the whole answer ("Answer N: ..." below the chat); its text."""
    n = page.locator("#chat .message-row").count()
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()
    wait_for(lambda: page.locator("#chat .message-row").count() >= n + 2, timeout, what="the answer")
    page.locator("#answer-status").filter(has_text=f"Answer {n // 2 + 1}:").wait_for(timeout=timeout * 1000)
    return page.locator("#chat .message-row").last.inner_text()
