"""Hostile input on the app's named API (``/chat``, ``/segment_point``) through gradio_client.

Table-driven, one in-process server for the module (127.0.0.1, a free port). Every case is either
answered or fails with a clear error naming the problem: gradio_client raises an exception whose
message carries the app's gr.Error text. After every case the server must still answer a normal
``/segment_point`` call. The Python API has its own table in tests/test_hostile_inputs.py.

    python tests/test_app_hostile.py --markdown    # the table of docs/RELIABILITY.md
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

import io  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for --markdown

from perception.limits import DEFAULT_LIMITS  # noqa: E402
from conftest import free_port  # noqa: E402

# --- inputs --------------------------------------------------------------------------------------


def _png(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def _bomb_png(w: int = 20000, h: int = 20000) -> bytes:
    """A 4x4 PNG whose IHDR claims w x h pixels, with a correct CRC (a decompression bomb's header)."""
    raw = _png(Image.new("RGB", (4, 4)))
    chunk = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def _gif() -> bytes:
    frames = [Image.new("P", (40, 30), i) for i in (1, 2, 3)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return b.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    return b.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": 60x30 stored, 30x60 shown
    return _jpeg(Image.new("RGB", (60, 30), (200, 10, 10)), exif=exif)


IMAGE_FILES = {  # file name -> bytes; written once per module
    "truncated.png": _png(Image.new("RGB", (64, 64), (1, 2, 3)))[:60],
    "zero.png": b"",
    "notes.png": b"hello, I am not an image\n" * 3,
    "one_pixel.png": _png(Image.new("RGB", (1, 1), (9, 9, 9))),
    "bomb.png": _bomb_png(),
    "animated.gif": _gif(),
    "grey16.png": _png(Image.fromarray(np.linspace(0, 65535, 32 * 24).reshape(24, 32).astype(np.uint16))),
    "cmyk.jpg": _jpeg(Image.new("CMYK", (50, 40), (0, 255, 255, 0))),
    "exif_rotated.jpg": _exif_rotated(),
    "grey_alpha.png": _png(Image.new("LA", (20, 10), (128, 100))),
}


def _rle(h: int, w: int, on: bool = False) -> dict:
    from perception import rle_encode

    m = np.zeros((h, w), bool)
    if on:
        m[h // 4 : h // 2, w // 4 : w // 2] = True
    return rle_encode(m)


def _claimed_rle(h: int, w: int) -> dict:
    """An all-zero RLE that claims h x w pixels in a few bytes (decoding it would allocate h * w bytes)."""
    return {"size": [h, w], "counts": [h * w]}


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str  # the test id
    endpoint: str  # "/chat" or "/segment_point"
    sent: str  # the hostile input, in words (docs table)
    args: Callable  # env -> the endpoint's arguments (image, message, regions, history) or (image, x, y)
    error: Optional[str] = None  # text the error must contain; None: it is answered
    answer: str = ""  # what the answer is (docs table), when error is None
    check: Optional[Callable] = None  # (outputs, env) -> None: assertions on an answer


FIND = "Find the red circle."


def chat(image="scene", message=FIND, regions="[]", history="[]"):
    """Arguments of /chat; image is a key of env.files."""
    return lambda env: (env.upload(image), message(env) if callable(message) else message,
                        regions(env) if callable(regions) else regions, history(env) if callable(history) else history)


def seg(image="scene", x=3, y=3):
    return lambda env: (env.upload(image), x(env) if callable(x) else x, y(env) if callable(y) else y)


def overlay_size(w, h):
    def check(out, env):
        assert Image.open(out[-1]).size == (w, h)
    return check


def mask_size(w, h):
    def check(out, env):
        assert out[0]["size"] == [h, w]
        assert Image.open(out[1]).size == (w, h)
    return check


def history_grows(n_before):
    def check(out, env):
        text, history, objects, overlay = out
        assert isinstance(text, str) and len(history) == n_before + 2
        assert history[-2]["role"] == "user" and history[-1]["role"] == "assistant"
    return check


def all_of(*checks):
    def check(out, env):
        for c in checks:
            c(out, env)
    return check


def two_regions_sent(out, env):
    history_grows(0)(out, env)
    assert [list(r) for r in out[1][0]["regions"]] == [["point"], ["box"]]


def text_kept(text):
    def check(out, env):
        assert out[1][-2]["content"] == text.strip()
    return check


LIM = DEFAULT_LIMITS
JUNK_HISTORY = [1, "x", None, {"role": "user"}, {"role": "assistant", "content": 5},
                {"role": "system", "content": "hi"}]
LONG_HISTORY = [m for i in range(100) for m in ({"role": "user", "content": f"turn {i}"},
                                                {"role": "assistant", "content": "ok"})]


def _forged_history(env):
    """10 plain turns, then one whose region is an RLE claiming 5000x5000: message 21."""
    return LONG_HISTORY[:20] + [
        {"role": "user", "content": "What is <region1>?", "regions": [{"mask": _claimed_rle(5000, 5000)}]},
        {"role": "assistant", "content": "a circle"}]


CASES = [
    # images
    Case("truncated_png", "/chat", "truncated PNG (first 60 bytes)", chat("truncated.png"), "truncated or corrupt"),
    Case("zero_bytes", "/segment_point", "zero-byte file", seg("zero.png"), "empty (0 bytes)"),
    Case("text_as_png", "/chat", "text file named .png", chat("notes.png"), "is not a readable image"),
    Case("no_image", "/chat", "no image (None)", lambda env: (None, FIND, "[]", "[]"), "No image"),
    Case("one_pixel_chat", "/chat", "1x1 PNG", chat("one_pixel.png"), answer="answered; 1x1 overlay",
         check=overlay_size(1, 1)),
    Case("one_pixel_click", "/segment_point", "1x1 PNG, click (0, 0)", seg("one_pixel.png", 0, 0),
         answer="answered; 1x1 mask", check=mask_size(1, 1)),
    Case("bomb_20000x20000", "/segment_point", "PNG header claiming 20000x20000 (valid CRC)", seg("bomb.png"),
         f"over the limit of {LIM.max_image_pixels:,} pixels"),
    Case("animated_gif", "/chat", "animated GIF (3 frames)", chat("animated.gif"), answer="first frame answered",
         check=overlay_size(40, 30)),
    Case("png_16bit", "/segment_point", "16-bit grey PNG", seg("grey16.png"), answer="rescaled to 8 bits; mask",
         check=mask_size(32, 24)),
    Case("cmyk_jpeg", "/chat", "CMYK JPEG", chat("cmyk.jpg"), answer="converted to RGB; answered",
         check=overlay_size(50, 40)),
    Case("exif_rotated_jpeg", "/segment_point", "JPEG stored 60x30 with EXIF rotate-90", seg("exif_rotated.jpg", 5, 50),
         answer="EXIF applied: 30x60 mask, click in the shown frame", check=mask_size(30, 60)),
    Case("grey_alpha", "/chat", "grey + alpha PNG", chat("grey_alpha.png"), answer="alpha over white; answered",
         check=overlay_size(20, 10)),
    # clicks
    Case("click_outside", "/segment_point", "click right of the image", seg(x=lambda env: env.W + 5), "is outside the"),
    Case("click_negative", "/segment_point", "click at x = -5", seg(x=-5), "is outside the"),
    Case("click_nan_text", "/segment_point", 'x = "NaN" (text)', seg(x="NaN"), "x must be a number (pixels)"),
    Case("click_huge", "/segment_point", "x = 1e300", seg(x=1e300), "point (1e+300, 3) is outside the"),
    # prompts
    Case("prompt_empty", "/chat", "empty message", chat(message=""), "message is empty"),
    Case("prompt_whitespace", "/chat", "whitespace only", chat(message="  \n\t  "), "message is empty"),
    Case("prompt_20k_chars", "/chat", "20,000 characters", chat(message="find " * 4000),
         f"the limit is {LIM.max_prompt_chars:,}"),
    Case("prompt_only_control_chars", "/chat", "only control characters", chat(message="\x00\x01\x02\x1b"),
         "message is empty"),
    Case("prompt_control_chars", "/chat", "control characters inside", chat(message="Find\x00 the \x07red circle\x1b."),
         answer="control characters dropped; answered", check=text_kept("Find the red circle.")),
    Case("prompt_mixed_scripts", "/chat", "mixed scripts, RTL marks and emoji",
         chat(message="Найди 红色的 circle 😀 دائرة \u200f"), answer="answered",
         check=text_kept("Найди 红色的 circle 😀 دائرة")),
    Case("prompt_image_token", "/chat", "`<image>` typed", chat(message="What is <image><image>?"),
         answer="plain text; answered", check=history_grows(0)),
    Case("prompt_loc_token", "/chat", "`<loc>` and `<p>` typed", chat(message="Find <loc><loc> the <p>circle</p>"),
         answer="plain text; answered", check=history_grows(0)),
    Case("prompt_html", "/chat", "HTML/script in the message", chat(message="<script>alert(1)</script> Find it"),
         answer="kept as text (the API returns plain text)", check=text_kept("<script>alert(1)</script> Find it")),
    Case("prompt_number", "/chat", "message 12345 (a number)", chat(message=12345), answer="read as the text '12345'",
         check=text_kept("12345")),
    Case("region_placeholder_no_region", "/chat", "`<region1>` with no regions", chat(message="What is <region1>?"),
         "<region1> refers to a region that does not exist"),
    Case("region_placeholder_zero", "/chat", "`<region0>`", chat(message="What is <region0>?"),
         "<region0> refers to a region that does not exist"),
    # regions
    Case("region_point_outside", "/chat", "point right of the image",
         chat(message="What is <region1>?", regions=lambda env: json.dumps([{"point": [env.W + 5, 3]}])),
         "is outside the"),
    Case("region_negative", "/chat", "point at negative coordinates",
         chat(message="What is <region1>?", regions='[{"point": [-4, 3]}]'), "negative coordinate"),
    Case("region_nan_text", "/chat", 'point ["NaN", 3]',
         chat(message="What is <region1>?", regions='[{"point": ["NaN", 3]}]'), "non-finite coordinate"),
    Case("region_inf", "/chat", "point [1e400, 3] (JSON reads it as infinity)",
         chat(message="What is <region1>?", regions='[{"point": [1e400, 3]}]'), "non-finite coordinate"),
    Case("region_box_inverted", "/chat", "box with x2 < x1",
         chat(message="What is <region1>?", regions='[{"box": [30, 5, 10, 20]}]'), "x2 > x1"),
    Case("region_two_kinds", "/chat", "region with both point and box",
         chat(message="What is <region1>?", regions='[{"point": [1, 2], "box": [0, 0, 5, 5]}]'), "exactly one"),
    Case("region_mask_empty", "/chat", "empty mask RLE (all zeros)",
         chat(message="What is <region1>?", regions=lambda env: json.dumps([{"mask": _rle(env.H, env.W)}])),
         "mask is empty"),
    Case("region_mask_wrong_size", "/chat", "mask RLE of another size (10x12)",
         chat(message="What is <region1>?", regions=json.dumps([{"mask": _rle(10, 12, on=True)}])),
         "mask is 10x12 (h x w) but the image is"),
    Case("region_mask_claims_5000x5000", "/chat", "8-byte RLE claiming 5000x5000 (refused before decoding)",
         chat(message="What is <region1>?", regions=json.dumps([{"mask": _claimed_rle(5000, 5000)}])),
         "mask is 5000x5000 (h x w) but the image is"),
    Case("region_mask_garbage", "/chat", "RLE counts that are not RLE",
         chat(message="What is <region1>?", regions=lambda env: json.dumps([{"mask": {"size": [env.H, env.W],
                                                                                      "counts": "!!!!"}}])),
         "region 1: Invalid RLE"),
    Case("region_huge_integer", "/chat", "point with a 401-digit integer",
         chat(message="What is <region1>?", regions='[{"point": [1' + "0" * 400 + ', 3]}]'),
         "region 1: Region point has a number that is too large"),
    Case("regions_5000_digit_number", "/chat", "regions with a 5001-digit number (over Python's int parsing limit)",
         chat(message="What is <region1>?", regions='[{"point": [1' + "0" * 5000 + ', 3]}]'),
         "regions must be a JSON list; could not parse it"),
    Case("region_mask_size_infinite", "/chat", "mask RLE whose size is [1e400, 5]",
         chat(message="What is <region1>?", regions='[{"mask": {"size": [1e400, 5], "counts": "ab"}}]'),
         "region 1: mask size must be [h, w] integers"),
    Case("region_fifty", "/chat", "50 regions",
         chat(message=" ".join(f"<region{i}>" for i in range(1, 51)), regions=json.dumps([{"point": [1, 1]}] * 50)),
         f"50 regions given; at most {LIM.max_regions} per message"),
    Case("region_out_of_order", "/chat", "`<region2> ... <region1>` with 2 regions",
         chat(message="Is <region2> left of <region1>?", regions='[{"point": [3, 4]}, {"box": [1, 1, 30, 30]}]'),
         answer="answered; both regions kept in order", check=two_regions_sent),
    Case("region_not_referred", "/chat", "a region the message never mentions",
         chat(message=FIND, regions='[{"point": [3, 4]}]'), "1 region(s) were given"),
    Case("regions_malformed_json", "/chat", "regions `[{\"point\": [1, 2]` (cut off)",
         chat(message="What is <region1>?", regions='[{"point": [1, 2]'), "regions must be a JSON list"),
    Case("regions_not_a_list", "/chat", "regions a JSON object",
         chat(message="What is <region1>?", regions='{"point": [1, 2]}'), "regions must be a JSON list"),
    Case("regions_nested_5000", "/chat", "regions `[[[[...]]]]` nested 5,000 levels (json.loads: RecursionError)",
         chat(message="What is <region1>?", regions="[" * 5000 + "]" * 5000),
         "regions must be a JSON list; could not parse it (it is nested too deeply)"),
    Case("region_point_nested", "/chat", "a point whose x is a list nested 500 levels",
         chat(message="What is <region1>?", regions='[{"point": [' + "[" * 500 + "]" * 500 + ', 3]}]'),
         "region 1: region point must be a list of 2 numbers; got [[[[...]]], 3]"),
    Case("regions_list_of_numbers", "/chat", "regions `[5]`",
         chat(message="What is <region1>?", regions="[5]"), "region 1: a region needs exactly one of"),
    # history
    Case("history_not_a_list", "/chat", "history a JSON object", chat(history={"role": "user", "content": "hi"}),
         "history must be a list"),
    Case("history_malformed_json", "/chat", "history text that is not JSON", chat(history="[{'role': 'user'"),
         "history must be a JSON list of messages"),
    Case("history_junk_entries", "/chat", "history of numbers, None, odd roles, missing contents",
         chat(history=JUNK_HISTORY), answer="junk skipped; returned as given + 2 messages",
         check=history_grows(len(JUNK_HISTORY))),
    Case("history_100_turns", "/chat", "history of 100 turns", chat(history=LONG_HISTORY),
         answer=f"the model sees the last {LIM.max_history_turns}; all 202 returned",
         check=history_grows(len(LONG_HISTORY))),
    Case("history_forged_mask", "/chat", "history message 21 (of 22) with an RLE claiming 5000x5000",
         chat(history=_forged_history), "history message 21: region 1: mask is 5000x5000"),
    Case("history_huge_integer", "/chat", "history message with a point of a 401-digit integer",
         chat(history=[{"role": "user", "content": "What is <region1>?", "regions": [{"point": [10**400, 3]}]},
                       {"role": "assistant", "content": "a circle"}]),
         "history message 1: region 1: point has a number too large"),
    Case("history_200k_chars", "/chat", "a history message of 200,000 characters",
         chat(history=[{"role": "user", "content": "x" * 200_000}, {"role": "assistant", "content": "ok"}]),
         f"history message 1 (user) has 200,000 characters; the limit is {LIM.max_prompt_chars:,} per message"),
    Case("history_200k_chars_answer", "/chat", "history message 22 (an answer) of 200,000 characters",
         chat(history=LONG_HISTORY[:20] + [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "y" * 200_000}]),
         "history message 22 (assistant) has 200,000 characters"),
    Case("history_200k_chars_old", "/chat", f"the same message {LIM.max_history_turns + 1} turns back",
         chat(history=[{"role": "user", "content": "x" * 200_000}, {"role": "assistant", "content": "ok"}]
              + LONG_HISTORY[:2 * LIM.max_history_turns]),
         answer="answered: turns the model does not see are never read",
         check=history_grows(2 + 2 * LIM.max_history_turns)),
    Case("history_nested_regions", "/chat", "history message whose region is a nested list `[[[[]]]]`",
         chat(history=[{"role": "user", "content": "What is <region1>?", "regions": [[[[[]]]]]},
                       {"role": "assistant", "content": "a circle"}]),
         answer="that turn read as plain text; answered", check=history_grows(2)),
    Case("history_answer_objects_forged", "/chat", "an answer's objects: a 5000x5000 RLE, a number, one too many",
         chat(history=[{"role": "user", "content": "Find the circle."},
                       {"role": "assistant", "content": "<p>the circle</p><loc>",
                        "objects": [{"mask": {"size": [5000, 5000], "counts": "0"}}]},
                       {"role": "user", "content": "Find the square."},
                       {"role": "assistant", "content": "<p>the square</p><loc>", "objects": [7]},
                       {"role": "user", "content": "Find the star."},
                       {"role": "assistant", "content": "<p>the star</p><loc>", "objects": [None, None]}]),
         answer="those answers read as plain text (nothing fed back); answered", check=history_grows(6)),
    Case("history_old_forged_mask", "/chat", f"the same message {LIM.max_history_turns + 1}+ turns back",
         chat(history=lambda env: _forged_history(env) + LONG_HISTORY[:2 * LIM.max_history_turns]),
         answer="answered: turns the model does not see are never read",
         check=history_grows(22 + 2 * LIM.max_history_turns)),
]


# --- the server ----------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One in-process app on 127.0.0.1 with the tiny model on CPU: (base url, gradio_client.Client)."""
    from gradio_client import Client

    from app import build_app, launch, model

    model.configure("tiny", "cpu")
    demo = build_app()
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        yield url, Client(url, verbose=False)
    finally:
        demo.close()
        model.configure()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Files and sizes the cases refer to: the ShapesRef scene and IMAGE_FILES."""
    from gradio_client import handle_file

    from perception.data.shapesref import draw_scene

    folder = tmp_path_factory.mktemp("hostile")
    scene = draw_scene(np.random.default_rng(11), n_objects=3, noise=False, jpeg=False)
    files = {"scene": folder / "scene.png"}
    scene.image.save(files["scene"])
    for name, data in IMAGE_FILES.items():
        (folder / name).write_bytes(data)
        files[name] = folder / name
    ys, xs = np.nonzero(scene.objects[0].mask)
    W, H = scene.image.size
    return SimpleNamespace(W=W, H=H, files=files, click=(int(xs[len(xs) // 2]), int(ys[len(ys) // 2])),
                           upload=lambda key: handle_file(str(files[key])))


def _still_answers(client, env):
    rle, overlay = client.predict(env.upload("scene"), *env.click, api_name="/segment_point")
    assert rle["size"] == [env.H, env.W]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(server, env, case):
    _, client = server
    args = case.args(env)
    if case.error is None:
        out = client.predict(*args, api_name=case.endpoint)
        if case.check:
            case.check(out, env)
    else:
        with pytest.raises(Exception) as caught:
            client.predict(*args, api_name=case.endpoint)
        message = str(caught.value)
        assert case.error in message, message
        assert "Traceback" not in message and "/tmp/" not in message  # no stack traces, no server paths
    _still_answers(client, env)


def test_enough_distinct_cases():
    assert len({c.name for c in CASES}) == len(CASES) >= 30


def test_upload_over_the_size_limit(server, env, tmp_path):
    """A file over max_upload_bytes: gradio_client refuses it before sending, the server's upload route too."""
    import httpx
    from gradio_client import handle_file

    url, client = server
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (LIM.max_upload_bytes + 1))
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), 3, 3, api_name="/segment_point")
    with big.open("rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    _still_answers(client, env)


@pytest.mark.parametrize("path", ["/etc/hostname", "app/examples/scene_0.png"])
def test_server_files_are_not_readable_through_the_api(server, env, path):
    """A request naming a server path instead of an upload is refused by gradio before the handler runs.

    (gradio_client would upload a local path itself, so this goes through the raw HTTP API.)
    """
    import httpx

    url, client = server
    path = str(Path(path).resolve()) if not path.startswith("/") else path
    payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 3, 3]}
    r = httpx.post(f"{url}gradio_api/call/segment_point", json=payload, timeout=30)
    event = r.json()["event_id"]
    r = httpx.get(f"{url}gradio_api/call/segment_point/{event}", timeout=60)
    assert "event: error" in r.text and "counts" not in r.text, r.text[:300]
    _still_answers(client, env)


@pytest.mark.parametrize("max_turns", [0, 1, 2, 6, -1])
@pytest.mark.parametrize("history", [
    [], JUNK_HISTORY, LONG_HISTORY[:8], JUNK_HISTORY + LONG_HISTORY[:6] + JUNK_HISTORY,
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
], ids=["empty", "junk", "four_turns", "junk_around_turns", "unpaired"])
def test_recent_history_keeps_the_turns_the_pipeline_reads(history, max_turns):
    """The app passes only perception.recent_messages to the model: the pipeline must read the same turns."""
    from perception import recent_messages
    from perception.pipeline import _history_turns

    recent = recent_messages(history, max_turns)
    assert history[len(history) - len(recent):] == recent  # a tail
    assert _history_turns(recent, max_turns, (8, 8)) == _history_turns(history, max_turns, (8, 8))


# --- docs ----------------------------------------------------------------------------------------


def markdown_table() -> str:
    """The case table as Markdown (docs/RELIABILITY.md)."""
    rows = ["| Endpoint | Input | Outcome |", "|---|---|---|"]
    for c in CASES:
        outcome = f"error: `{c.error}`" if c.error else c.answer
        rows.append(f"| `{c.endpoint}` | {c.sent.replace('|', '/')} | {outcome.replace('|', '/')} |")
    return "\n".join(rows)


def test_docs_table_is_current():
    """docs/RELIABILITY.md holds this table and every limit."""
    from dataclasses import fields

    doc = (Path(__file__).resolve().parent.parent / "docs" / "RELIABILITY.md").read_text()
    assert markdown_table() in doc, "regenerate it: python tests/test_app_hostile.py --markdown"
    for f in fields(DEFAULT_LIMITS):
        assert f"`{f.name}`" in doc, f.name


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown_table())
    else:
        sys.exit(pytest.main([__file__, *sys.argv[1:]]))
