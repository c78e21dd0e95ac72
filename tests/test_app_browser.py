"""The app in a real browser (Playwright + Debian's chromium): upload, click-to-refer, ask, overlay.

The UI flow always runs. What the answers *say* is only checked once a trained tiny checkpoint
exists (checkpoints/tiny/config.json); before that the model is random and those checks skip.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from app.browser import CHROMIUM, CHROMIUM_ARGS, ask, click_pixel, free_port, pixel_inside, wait_for  # noqa: E402

TRAINED = (Path(__file__).resolve().parent.parent / "checkpoints" / "tiny" / "config.json").is_file()

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM}", allow_module_level=True)


@pytest.fixture(scope="module")
def url():
    from app import build_app, launch, model

    model.configure("tiny", "cpu")
    demo = build_app()
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        model.configure()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A clean scene with three objects, saved as PNG; the target is the largest object."""
    from perception.data.shapesref import draw_scene

    s = draw_scene(np.random.default_rng(11), n_objects=3, noise=False, jpeg=False, background=(200, 200, 200))
    path = tmp_path_factory.mktemp("browser") / "scene.png"
    s.image.save(path)
    target = max(s.objects, key=lambda o: o.mask.sum())
    return s, target, str(path)


@pytest.fixture(scope="module")
def session(browser, url, scene):
    """One page that went through the whole flow: upload, click, ask about the region, ask to find."""
    s, target, path = scene
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#image input[type=file]").set_input_files(path)
    W, H = s.image.size
    page.locator("#image-info").filter(has_text=f"{W} × {H} px").wait_for(timeout=30_000)  # upload handled
    click_pixel(page, "#image", *pixel_inside(target.mask))
    box = page.locator("#message textarea")
    wait_for(lambda: "<region1>" in box.input_value(), what="<region1> in the message box")
    regions_text = page.locator("#regions").inner_text() + page.locator("#regions input").input_value()
    same = "Find all the objects with the same color as <region1>."
    offered = page.locator("#suggestions").get_by_text(same)
    offered.first.wait_for(timeout=30_000)  # the click offers requests about the new region
    offered.first.click()
    wait_for(lambda: box.input_value() == same, what="the picked suggestion in the message box")
    region_answer = ask(page, "What is <region1>?")
    find_answer = ask(page, f"Find the {target.color} {target.shape}.")
    yield {"page": page, "regions_text": regions_text, "region_answer": region_answer,
           "find_answer": find_answer, "target": target, "scene": s}
    page.close()


def test_ui_flow_click_region_send_answer(session):
    page = session["page"]
    assert "region1" in session["regions_text"]
    rows = page.locator("#chat .message-row")
    assert rows.count() == 4  # two user turns, two answers
    assert "<region1>" in rows.nth(0).inner_text()  # the placeholder stays visible, not eaten as HTML
    assert page.locator("#message textarea").input_value() == ""
    assert page.locator("#regions input").input_value() == ""  # the region went with the message
    assert page.locator("#overlay img").count() == 1
    nw, nh = page.locator("#overlay img").first.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert (nw, nh) == session["scene"].image.size


def test_missing_region_shows_a_warning(session):
    page = session["page"]
    page.locator("#message textarea").fill("What is <region3>?")
    page.locator("#send").click()
    toast = page.locator("[data-testid=toast-body]").filter(has_text="region3")
    toast.first.wait_for(timeout=15_000)
    assert "<region3>" in toast.first.inner_text()
    assert page.locator("#message textarea").input_value() == "What is <region3>?"  # kept for editing


def test_answer_names_the_clicked_object(session):
    if not TRAINED:
        pytest.skip("no trained checkpoint in checkpoints/tiny yet: the untrained model's answers are random")
    t = session["target"]
    text = session["region_answer"].lower()
    assert t.color in text or t.shape in text, text


def test_find_grounds_the_object_in_colour(session):
    if not TRAINED:
        pytest.skip("no trained checkpoint in checkpoints/tiny yet: the untrained model's answers are random")
    page = session["page"]
    last = page.locator("#chat .message-row").last.inner_html()
    assert re.search(r"color:\s*(#e6194b|rgb\(230, 25, 75\))", last), last  # phrase in object 1's colour
    text = session["find_answer"].lower()
    assert "[1]" in text, text  # object 1 is grounded and drawn on the overlay
    assert page.locator("#overlay img").count() == 1


def test_not_an_image_upload_shows_an_error(browser, url, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_text("these are not pixels")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.locator("#image input[type=file]").set_input_files(str(bad))
        toast = page.locator("[data-testid=toast-body]").filter(has_text="not a readable image")
        toast.first.wait_for(timeout=15_000)
        assert "holiday.png" in toast.first.inner_text()
    finally:
        page.close()


def test_example_then_clear_resets_the_session(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.locator("#examples img").nth(1).click()
        page.locator("#image-info").filter(has_text=" px").wait_for(timeout=15_000)
        page.locator('#image button[aria-label="Remove Image"]').first.click()
        page.locator("#image-info").filter(has_text="No image yet").wait_for(timeout=15_000)
    finally:
        page.close()
