"""Hostile input on the Python API: every case is handled correctly or raises a clear ValueError.

Table-driven; the app's endpoints get the same treatment in tests/test_app*.py.
"""

import io
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

    turns, _, _ = _history_turns(history, 2, scene.image.size)
    assert [t[0] for t in turns] == ["turn 2", "turn 3"]


def test_determinism_across_calls_and_pipelines(tiny_model, scene):
    a = Pipeline(tiny_model).chat(scene.image, "Find the blue square.", regions=None)
    b = Pipeline(tiny_model).chat(scene.image.copy(), "Find the blue square.")
    c = Pipeline(tiny_model).chat(scene.image, "Find the blue square.")
    assert a.raw == b.raw == c.raw
    assert [o.box for o in a.objects] == [o.box for o in b.objects]
