"""Hostile input on the Python API: every case is handled correctly or raises a clear ValueError.

Table-driven; the app's endpoints get the same treatment in tests/test_app*.py.
"""

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import perception
from perception.images import load_image
from perception.pipeline import Pipeline


def _png_bytes(img):
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def _huge_png_header(w=20000, h=20000):
    """A tiny file whose PNG header claims w x h pixels (a decompression bomb)."""
    raw = _png_bytes(Image.new("RGB", (4, 4)))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def _gif_bytes():
    frames = [Image.new("P", (40, 30), i) for i in (1, 2, 3)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return b.getvalue()


def _exif_rotated_jpeg():
    img = Image.new("RGB", (60, 30), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    b = io.BytesIO()
    img.save(b, "JPEG", exif=exif)
    return b.getvalue()


def _cmyk_jpeg():
    b = io.BytesIO()
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(b, "JPEG")
    return b.getvalue()


def _png16():
    a = (np.linspace(0, 65535, 32 * 24).reshape(24, 32)).astype(np.uint16)
    return _png_bytes(Image.fromarray(a, mode="I;16"))


GOOD_IMAGES = {  # name -> (bytes, expected RGB size)
    "1x1": (_png_bytes(Image.new("RGB", (1, 1), (9, 9, 9))), (1, 1)),
    "animated_gif": (_gif_bytes(), (40, 30)),
    "png_16bit": (_png16(), (32, 24)),
    "cmyk_jpeg": (_cmyk_jpeg(), (50, 40)),
    "exif_rotated_jpeg": (_exif_rotated_jpeg(), (30, 60)),
    "grey_alpha": (_png_bytes(Image.new("LA", (20, 10), (128, 100))), (20, 10)),
    "palette": (_png_bytes(Image.new("P", (12, 8), 3)), (12, 8)),
}
BAD_IMAGES = {  # name -> (input, words the error must contain)
    "truncated_png": (_png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60], "truncated"),
    "zero_bytes": (b"", "empty"),
    "text_as_png": (b"hello, I am not an image\n" * 3, "not a readable image"),
    "bomb_20000x20000": (_huge_png_header(), "over the limit"),
    "none": (None, "no image"),
}


@pytest.mark.parametrize("name", sorted(GOOD_IMAGES))
def test_odd_images_are_converted(name):
    data, size = GOOD_IMAGES[name]
    img = load_image(data)
    assert img.mode == "RGB" and img.size == size


def test_exif_orientation_is_applied():
    img = load_image(GOOD_IMAGES["exif_rotated_jpeg"][0])
    assert img.size == (30, 60)


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images_raise_clear_errors(name):
    data, words = BAD_IMAGES[name]
    with pytest.raises(ValueError, match=words):
        load_image(data)


def test_bad_image_file_path_names_the_file(tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(BAD_IMAGES["truncated_png"][0])
    with pytest.raises(ValueError, match="broken.png"):
        load_image(p)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return Pipeline(tiny_model, limits=perception.Limits(max_new_tokens=6))


@pytest.mark.parametrize("name", sorted(GOOD_IMAGES))
def test_chat_on_odd_images(pipe, name):
    ans = pipe.chat(load_image(GOOD_IMAGES[name][0]), "Find the red circle.")
    assert isinstance(ans.text, str)


BAD_PROMPTS = {
    "empty": ("", "empty"),
    "whitespace": ("  \n\t  ", "empty"),
    "20k_chars": ("find " * 4000, "limit"),
    "only_control_chars": ("\x00\x01\x02", "empty"),
    "not_text": (12345, "must be text"),
}
OK_PROMPTS = {
    "control_chars_inside": "Find\x00 the \x07red circle\x1b.",
    "mixed_scripts_emoji": "Найди 红色的 circle 😀 دائرة",
    "typed_image_token": "What is <image><image>?",
    "typed_perception_token": "Find <loc><loc> the <p>circle</p>",
    "typed_region_token": "What is <region>?",
    "rtl_and_zero_width": "\u200f\u200bFind the star\u200d",
}


@pytest.mark.parametrize("name", sorted(BAD_PROMPTS))
def test_bad_prompts(pipe, scene, name):
    text, words = BAD_PROMPTS[name]
    with pytest.raises(ValueError, match=words):
        pipe.chat(scene.image, text)


@pytest.mark.parametrize("name", sorted(OK_PROMPTS))
def test_odd_prompts_are_answered(pipe, scene, name):
    ans = pipe.chat(scene.image, OK_PROMPTS[name])
    assert isinstance(ans.text, str)


def _regions_bad(scene):
    W, H = scene.image.size
    return {
        "point_outside": ([perception.Region(point=(W + 5, 3))], "outside"),
        "box_outside": ([perception.Region(box=(W + 1, 0, W + 9, 9))], "outside"),
        "empty_mask": ([perception.Region(mask=np.zeros((H, W), bool))], "empty"),
        "mask_wrong_size": ([perception.Region(mask=np.ones((H + 1, W), bool))], "image is"),
        "fifty_regions": ([perception.Region(point=(1, 1))] * 50, "at most"),
        "placeholder_missing_region": ([], "no regions"),
    }


@pytest.mark.parametrize("name", ["point_outside", "box_outside", "empty_mask", "mask_wrong_size", "fifty_regions", "placeholder_missing_region"])
def test_bad_regions(pipe, scene, name):
    regions, words = _regions_bad(scene)[name]
    msg = " ".join(f"<region{i + 1}>" for i in range(max(1, len(regions))))
    with pytest.raises(ValueError, match=words):
        pipe.chat(scene.image, f"What is {msg}?", regions=regions)


@pytest.mark.parametrize("kwargs,words", [
    ({"point": (-1, 5)}, "negative"),
    ({"point": (float("nan"), 5)}, "non-finite"),
    ({"box": (10, 10, 5, 20)}, "x2 > x1"),
    ({"box": (1, 2, 3)}, "4 numbers"),
    ({"point": (1, 2), "box": (1, 2, 3, 4)}, "exactly one"),
    ({"mask": np.zeros((2, 3, 4))}, "2-D"),
])
def test_region_validation(kwargs, words):
    with pytest.raises(ValueError, match=words):
        perception.Region(**kwargs)


def test_regions_out_of_order_and_as_dicts(pipe, scene):
    ans = pipe.chat(scene.image, "Is <region2> bigger than <region1>?",
                    regions=[{"point": [3, 4]}, {"box": [1, 1, 30, 30]}])
    assert [list(r) for r in ans.history[0]["regions"]] == [["point"], ["box"]]


def test_history_with_unknown_regions_is_plain_text(pipe, scene):
    history = [{"role": "user", "content": "What is <region1>?"}, {"role": "assistant", "content": "a thing"}]
    ans = pipe.chat(scene.image, "And the red one?", history=history)
    assert len(ans.history) == 4


def test_history_is_trimmed_to_limit(tiny_model, scene):
    p = Pipeline(tiny_model, limits=perception.Limits(max_new_tokens=2, max_history_turns=2))
    history = []
    for i in range(4):
        history = p.chat(scene.image, f"turn {i}", history=history).history
    from perception.pipeline import _history_turns

    turns, _, _, _ = _history_turns(history, 2, scene.image.size)
    assert [t[0] for t in turns] == ["turn 2", "turn 3"]


def test_determinism_across_calls_and_pipelines(tiny_model, scene):
    a = Pipeline(tiny_model).chat(scene.image, "Find the blue square.", regions=None)
    b = Pipeline(tiny_model).chat(scene.image.copy(), "Find the blue square.")
    c = Pipeline(tiny_model).chat(scene.image, "Find the blue square.")
    assert a.raw == b.raw == c.raw
    assert [o.box for o in a.objects] == [o.box for o in b.objects]


# --- long history, nested regions, prompts over the context ------------------------------------


def _nested(depth):
    v = []
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("history, words", [
    ([{"role": "user", "content": "x" * 200_000}, {"role": "assistant", "content": "ok"}],
     "history message 1 (user) has 200,000 characters; the limit is 2,000 per message"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "y" * 2001}],
     "history message 2 (assistant) has 2,001 characters"),
], ids=["user_200k", "assistant_2001"])
def test_history_over_the_message_limit_is_refused(pipe, scene, history, words):
    """Before: cut to 4,000 characters, a prompt over the tiny model's 1,024 positions, and an
    empty answer. Now the history is held to the same per-message limit as the message."""
    with pytest.raises(ValueError, match=re.escape(words)):
        pipe.chat(scene.image, "Find the red circle.", history=history)


def test_long_history_the_model_does_not_read_is_not_checked(tiny_model, scene):
    p = Pipeline(tiny_model, limits=perception.Limits(max_new_tokens=2, max_history_turns=1))
    history = [{"role": "user", "content": "x" * 200_000}, {"role": "assistant", "content": "ok"},
               {"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    assert len(p.chat(scene.image, "Find the red circle.", history=history).history) == 6


@pytest.mark.parametrize("regions, words", [
    (_nested(5000), "a region must be perception.Region or a dict"),
    ([_nested(5000)], "a region must be perception.Region or a dict"),
    ([{"point": _nested(5000)}], r"point must be a list of 2 numbers; got \[\[\[\[\.\.\.\]\]\]\]"),
    ([{"box": [1, 2, _nested(5000), 9]}], "box must be a list of 4 numbers"),
    ([{"mask": {"size": _nested(5000), "counts": "ab"}}], "not a COCO RLE"),
], ids=["regions_nested", "region_nested", "point_nested", "box_nested", "mask_size_nested"])
def test_nested_regions_get_a_clear_error(pipe, scene, regions, words):
    """Never a RecursionError from quoting the input in the message."""
    with pytest.raises(ValueError, match=words):
        pipe.chat(scene.image, "What is <region1>?", regions=regions)


def test_history_with_nested_regions_is_plain_text(pipe, scene):
    history = [{"role": "user", "content": "What is <region1>?", "regions": [_nested(5000)]},
               {"role": "assistant", "content": "a circle"}]
    assert len(pipe.chat(scene.image, "And now?", history=history).history) == 4


def test_prompt_is_fitted_to_the_context(tiny_model):
    """Oldest turns go first (regions stay aligned); a new message that cannot fit is refused."""
    from perception.pipeline import _context_length, _encode_fitting

    limit = _context_length(tiny_model)
    assert limit == tiny_model.config.backbone.text.max_positions == 1024
    turns = [(f"{i} " + "x" * 400, "ok") for i in range(4)] + [("What is <region1>?", None)]
    regions, keep = [["r0"], ["r1"], ["r2"], ["r3"], ["new"]], [True] * 5
    enc = _encode_fitting(tiny_model, turns, regions, keep, reserve=96)
    assert len(enc.input_ids) + 96 <= limit and 1 <= len(turns) < 5
    assert turns[-1] == ("What is <region1>?", None) and turns[0][0].startswith(f"{5 - len(turns)} ")
    assert [r[0] for r in regions] == [f"r{5 - len(turns) + i}" for i in range(len(turns) - 1)] + ["new"]
    assert enc.region_order == [(len(turns) - 1, 1)] and len(keep) == len(turns)
    with pytest.raises(ValueError, match="over the model's context of 1,024 tokens: shorten the message"):
        _encode_fitting(tiny_model, [("y" * 1000, None)], [[]], [True], reserve=96)


def test_a_message_within_the_limit_but_over_the_context_is_refused(pipe, scene):
    with pytest.raises(ValueError, match="context of 1,024 tokens"):
        pipe.chat(scene.image, "Find " + "y" * 1990)


def test_history_pairing_known_answers():
    """One pairing for the pipeline and the app: a user message then an assistant one, junk skipped,
    a user message replaced by the next one."""
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, 7,
            {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"},
            {"role": "user", "content": None}, {"role": "user", "content": "e"}, {"role": "assistant", "content": "f"}]
    assert perception.pair_turns(msgs) == [(1, 3), (6, 7)]
    assert perception.recent_turns(msgs, 1) == [(6, 7)] and perception.recent_turns(msgs, 0) == []
    assert perception.recent_turns(msgs, -1) == perception.recent_turns(msgs, 9) == [(1, 3), (6, 7)]
    assert perception.recent_messages(msgs, 1) == msgs[6:] and perception.recent_messages(msgs, 2) == msgs[1:]
    perception.check_turn_lengths(msgs, [(1, 3)], max_chars=1)
    with pytest.raises(ValueError, match="history message 9 \\(user\\) has 1 characters; the limit is 0"):
        perception.check_turn_lengths(msgs, [(6, 7)], max_chars=0, first=3)
