"""The Gradio app: formats, handlers called directly, and the named API through gradio_client.

The tiny preset may be untrained here (random answers), so these tests check structure and
formats, not what the model says.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from perception import PALETTE, Answer, Grounding, Limits, color_hex, rle_decode, rle_encode  # noqa: E402
from perception.data.shapesref import draw_scene  # noqa: E402

from app import format as fmt  # noqa: E402
from app import handlers as h  # noqa: E402
from app import model  # noqa: E402
from conftest import free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def tiny_cpu():
    model.configure("tiny", "cpu")
    yield
    model.configure()


@pytest.fixture(scope="module")
def scene():
    return draw_scene(np.random.default_rng(7), n_objects=3, noise=False, jpeg=False)


def inside(obj) -> tuple[int, int]:
    """A pixel well inside the object: the mask pixel nearest its centroid."""
    ys, xs = np.nonzero(obj.mask)
    k = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return int(xs[k]), int(ys[k])


def select(x, y) -> gr.SelectData:
    return gr.SelectData(None, {"index": [x, y], "value": None})


def run(gen) -> list:
    return list(gen)


# --- formats ------------------------------------------------------------------------------------


def test_answer_html_colours_match_the_overlay_palette():
    html = fmt.answer_html("Here are the red circle and two squares.", ["the red circle", "two squares", "two squares"])
    assert f'color:{color_hex(0)}' in html and ">the red circle</span>" in html
    assert f'color:{color_hex(1)}' in html and ">two squares</span>" in html
    assert "[2]" in html and "[3]" in html  # both square objects are numbered after the shared phrase
    assert color_hex(0) == "#%02x%02x%02x" % PALETTE[0]  # the colour draw_overlay gives object 0


def test_answer_html_repeated_phrases_get_their_own_colours():
    html = fmt.answer_html("the blue triangle, the blue triangle", ["the blue triangle"] * 2)
    assert html.count("</span>") == 2 and color_hex(0) in html and color_hex(1) in html


@pytest.mark.parametrize("text, phrases, expect", [
    ("plain", [], "plain"),
    ("a <b> & c", [], "a &lt;b&gt; &amp; c"),  # model text is escaped, never HTML
    ("see it", [None], "see it [1]"),  # no phrase: the marker goes at the end
])
def test_answer_html_plain_cases(text, phrases, expect):
    out = fmt.answer_html(text, phrases)
    assert out.replace(f'<sup style="color:{color_hex(0)};font-weight:700">', "").replace("</sup>", "") == expect


def test_user_html_keeps_placeholders_visible():
    out = fmt.user_html("What is <region2>?")
    assert "&lt;region2&gt;" in out and color_hex(1) in out


def test_parse_regions_formats_and_errors():
    m = np.zeros((4, 6), bool)
    m[1:3, 2:4] = True
    regs = fmt.parse_regions(json.dumps([{"point": [1, 2]}, {"box": [0, 0, 3, 3]}, {"mask": rle_encode(m)}]), (6, 4))
    assert [r.kind for r in regs] == ["point", "box", "mask"] and (regs[2].mask == m).all()
    assert fmt.parse_regions("[]") == [] and fmt.parse_regions("") == [] and fmt.parse_regions(None) == []
    with pytest.raises(ValueError, match="JSON list"):
        fmt.parse_regions("[{")
    with pytest.raises(ValueError, match="region 1"):
        fmt.parse_regions([{"mask": rle_encode(m)}], (5, 5))
    with pytest.raises(ValueError, match="region 1"):
        fmt.parse_regions([{"nothing": 1}])


def test_placeholders_check_compact_remove():
    with pytest.raises(ValueError, match="region3"):
        fmt.check_placeholders("What is <region3>?", 2)
    fmt.check_placeholders("<region1> and <region2>", 2)
    assert fmt.compact_regions("What is <region2>?", ["A", "B"]) == ("What is <region1>?", ["B"])
    assert fmt.remove_placeholder("<region1> next to <region2>", 1) == " next to <region1>"
    assert fmt.append_placeholder("What is", 3) == "What is <region3>"


# --- handlers -----------------------------------------------------------------------------------


def test_click_region_message_answer_flow(scene):
    sess, view, chat, overlay, *_ = h.set_image(h.new_session(), scene.image)
    assert view.size == scene.image.size and chat == [] and overlay is None

    x, y = inside(scene.objects[0])
    sess, view, msg, dd = h.click(sess, "What is", h.MODE_OBJECT, None, select(x, y))
    assert msg == "What is <region1>" and len(sess["regions"]) == 1
    assert rle_decode(sess["regions"][0]["region"]["mask"]).shape == (scene.image.height, scene.image.width)
    assert view.size == scene.image.size and dd["choices"]
    # box mode: two corners make one box region
    sess, view, msg, _ = h.click(sess, msg, h.MODE_BOX, None, select(5, 6))
    assert sess["box_start"] == [5, 6] and len(sess["regions"]) == 1
    sess, view, msg, dd = h.click(sess, msg, h.MODE_BOX, None, select(40, 30))
    assert sess["regions"][1]["region"] == {"box": [5, 6, 41, 31]} and msg.endswith("<region2>")
    # remove region 1: region 2 becomes region 1, in the message too
    first = dd["choices"][0]
    first = first[0] if isinstance(first, (list, tuple)) else first
    sess, view, msg, dd = h.remove_region(sess, msg, first)
    assert msg == "What is <region1>" and sess["regions"][0]["region"]["box"] == [5, 6, 41, 31]

    outs = run(h.chat(sess, msg + "?", True, True))
    assert len(outs) >= 2
    sess2, chat, box, view, dd, overlay, objects, jfile, pfile, status = outs[-1]
    assert status.startswith("Answer 1:")
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert "&lt;region1&gt;" in chat[0]["content"]
    assert len(sess2["history"]) == 2 and sess2["history"][0]["regions"] == [{"box": [5, 6, 41, 31]}]
    assert sess2["regions"] == [] and sess["regions"]  # consumed by the message; the old state is untouched
    assert overlay.size == scene.image.size and isinstance(objects, list)
    exported = json.loads(Path(jfile).read_text())
    assert set(exported) == {"text", "objects"} and Image.open(pfile).size == scene.image.size

    # a second turn keeps the history
    outs = run(h.chat(sess2, "Find the circle.", False, True))
    assert len(outs[-1][0]["history"]) == 4 and len(outs[-1][1]) == 4


def test_answer_objects_are_coloured_and_exported(scene, monkeypatch):
    o = scene.objects[0]

    def fake_stream(image, message, history, regions):
        yield "Here is"
        yield Answer(text=f"Here is the {o.color} {o.shape}.", raw="",
                     objects=[Grounding(box=tuple(map(float, o.box)), mask=o.mask, phrase=f"the {o.color} {o.shape}")],
                     history=list(history) + [{"role": "user", "content": message, "regions": []},
                                              {"role": "assistant", "content": "x"}])

    monkeypatch.setattr(model, "stream_chat", fake_stream)
    sess = h.set_image(h.new_session(), scene.image)[0]
    *_, (sess, chat, _, _, _, overlay, objects, jfile, pfile, status) = run(h.chat(sess, "Find it.", True, True))
    assert f"color:{color_hex(0)}" in chat[-1]["content"] and f">the {o.color} {o.shape}</span>" in chat[-1]["content"]
    assert status == "Answer 1: 1 object grounded."
    assert objects[0]["phrase"] == f"the {o.color} {o.shape}" and len(objects[0]["box"]) == 4
    assert (rle_decode(objects[0]["mask"]) == o.mask).all()
    px = np.asarray(overlay)[inside(o)[1], inside(o)[0]]
    assert not np.array_equal(px, np.asarray(scene.image)[inside(o)[1], inside(o)[0]])  # mask drawn
    assert json.loads(Path(jfile).read_text())["objects"] == objects
    no_masks, _ = h.redraw(sess, False, False)
    x, y = inside(o)
    assert np.array_equal(np.asarray(no_masks)[y, x], np.asarray(scene.image)[y, x])  # masks off: pixel untouched


def test_bad_inputs_warn_or_error(scene, tmp_path, monkeypatch):
    empty = h.new_session()
    with pytest.warns(UserWarning, match="Load an image first"):
        h.click(empty, "", h.MODE_OBJECT, None, select(3, 3))
    with pytest.warns(UserWarning, match="No image"):
        assert run(h.chat(empty, "hi"))[-1][1] == gr.skip()
    sess = h.set_image(empty, scene.image)[0]
    with pytest.warns(UserWarning, match="empty"):
        run(h.chat(sess, "   "))
    two = h.add_box(h.add_box(sess, "", 1, 1, 20, 20)[0], "", 5, 5, 30, 30)[0]
    with pytest.warns(UserWarning, match="four numbers"):
        assert h.add_box(sess, "", 10, 1, 5, None)[0]["regions"] == []
    with pytest.warns(UserWarning, match="outside"):
        h.add_box(sess, "", 9000, 1, 9005, 5)
    with pytest.warns(UserWarning, match="region3.*only 2 region"):
        out = run(h.chat(two, "What is <region3>?"))
    assert out[-1][0]["regions"] == two["regions"]  # nothing consumed
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.warns(UserWarning, match="not a readable image"):
        assert h.set_image(empty, str(bad))[0]["image"] is None
    monkeypatch.setattr(model, "limits", lambda: Limits(max_image_pixels=100))
    with pytest.warns(UserWarning, match="over the limit"):
        assert h.set_image(empty, scene.image)[0]["image"] is None
    monkeypatch.undo()

    def broken(*a, **k):
        raise RuntimeError("CUDA exploded")
        yield

    monkeypatch.setattr(model, "stream_chat", broken)
    with pytest.raises(gr.Error, match="model failed") as e:
        run(h.chat(sess, "Find the circle."))
    assert "CUDA exploded" not in e.value.message  # details stay in the server log


def test_example_gallery_and_files():
    assert len(h.EXAMPLES) == 6
    for p in h.EXAMPLES:
        assert p.stat().st_size < 200_000
    sess, view, *_ = h.pick_example(h.new_session(), gr.SelectData(None, {"index": 2, "value": None}))
    assert sess["image"] is not None and view.size == sess["image"].size
    big = [p for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts and "runs" not in p.parts
           and p.stat().st_size > 10_000_000 and p.parts[len(REPO.parts)] in ("app", "docs")]
    assert not big, big
    assert not list((REPO / "app").glob("*.pyi"))  # no gradio stub files written into the package


def test_model_loads_lazily_once():
    import importlib

    model.configure("tiny", "cpu")
    assert model.get_pipeline.cache_info().currsize == 0  # nothing loaded by import or configure
    importlib.import_module("app").build_app()
    assert model.get_pipeline.cache_info().currsize == 0  # nor by building the UI
    assert model.get_pipeline() is model.get_pipeline()


# --- the named API through gradio_client --------------------------------------------------------




@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    from app import build_app, launch

    demo = build_app()
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    assert demo.max_file_size == model.limits().max_upload_bytes  # the upload size limit is set
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def scene_file(scene, tmp_path_factory):
    p = tmp_path_factory.mktemp("app") / "scene.png"
    scene.image.save(p)
    return str(p)


def test_api_names(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) == {"/chat", "/segment_point"}
    assert [p["parameter_name"] for p in api["/chat"]["parameters"]] == ["image", "message", "regions", "history"]
    assert [p["parameter_name"] for p in api["/segment_point"]["parameters"]] == ["image", "x", "y"]


def test_api_chat_and_segment_point(client, scene, scene_file):
    from gradio_client import handle_file

    W, H = scene.image.size
    x, y = inside(scene.objects[0])
    rle, overlay = client.predict(handle_file(scene_file), x, y, api_name="/segment_point")
    mask = rle_decode(rle)
    assert mask.shape == (H, W) and mask.dtype == bool
    assert Image.open(overlay).size == (W, H)

    regions = json.dumps([{"mask": rle}, {"point": [x, y]}, {"box": [1, 1, 30, 30]}])
    text, history, objects, overlay = client.predict(
        handle_file(scene_file), "Compare <region1>, <region2> and <region3>.", regions, "[]", api_name="/chat")
    assert isinstance(text, str) and Image.open(overlay).size == (W, H)
    assert len(history) == 2 and history[0]["role"] == "user" and len(history[0]["regions"]) == 3
    for o in objects:
        assert len(o["box"]) == 4 and all(isinstance(v, (int, float)) for v in o["box"])
        assert rle_decode(o["mask"]).shape == (H, W) and (o["phrase"] is None or isinstance(o["phrase"], str))
    text2, history2, _, _ = client.predict(handle_file(scene_file), "Find the circle.", "[]", history, api_name="/chat")
    assert len(history2) == 4 and history2[:2] == history


@pytest.mark.parametrize("message, regions, pattern", [
    ("What is <region3>?", "[]", r"<region3> refers to a region that does not exist"),
    ("   ", "[]", "message is empty"),
    ("What is <region1>?", '[{"point": [1, 2]', "regions must be a JSON list"),
    ("What is <region1>?", '[{"point": [99999, 2]}]', "outside"),
])
def test_api_bad_input_is_a_clear_error(client, scene_file, message, regions, pattern):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=pattern):
        client.predict(handle_file(scene_file), message, regions, "[]", api_name="/chat")


def test_api_rejects_a_non_image(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "notes.png"
    bad.write_text("not pixels")
    with pytest.raises(AppError, match="not a readable image"):
        client.predict(handle_file(str(bad)), "Find it.", "[]", "[]", api_name="/chat")


def test_click_that_overtakes_its_upload_uses_the_shown_image(scene):
    sess, view, msg, _ = h.click(h.new_session(), "", h.MODE_BOX, scene.image, select(3, 4))
    assert sess["image"].size == scene.image.size and sess["box_start"] == [3, 4]


# --- the public API only; answers that ground nothing; follow-ups; suggestions ---------------


def test_app_imports_only_the_public_perception_api():
    """app/ imports ``perception`` (its __init__), never ``perception.<module>`` (the example scenes
    are drawn by docs/make_examples.py, outside the app)."""
    import ast

    found = []
    for path in sorted((REPO / "app").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith("perception.")]
    assert not found, found


def _fake_answer(text, objects=()):
    """A stand-in for model.stream_chat whose answer is ``text`` with ``objects``; records its calls."""
    calls = []

    def stream(image, message, history, regions):
        calls.append({"message": message, "history": [dict(m) for m in history], "regions": list(regions)})
        yield text[:5]
        yield Answer(text=text, objects=list(objects), raw=text,
                     history=list(history) + [{"role": "user", "content": message, "regions": []},
                                              {"role": "assistant", "content": text}])

    return stream, calls


def _final(stream):
    """A stand-in for model.chat (the /chat endpoint's batched answers) from a fake stream_chat: its Answer."""
    return lambda image, message, history, regions: list(stream(image, message, history, regions))[-1]


def test_an_answer_with_no_object_renders_cleanly(scene, monkeypatch):
    """"There is no purple star." grounds nothing: the plain image, a short status line, [] as JSON."""
    stream, _ = _fake_answer("There is no purple star.")
    monkeypatch.setattr(model, "stream_chat", stream)
    sess = h.set_image(h.new_session(), scene.image)[0]
    *_, (sess, chat, _, _, _, overlay, objects, jfile, pfile, status) = run(h.chat(sess, "Find the purple star."))
    assert chat[-1]["content"] == "There is no purple star."  # no markers, no "(empty answer)"
    assert status == "Answer 1: nothing grounded."
    assert objects == [] and json.loads(Path(jfile).read_text()) == {"text": "There is no purple star.", "objects": []}
    assert np.array_equal(np.asarray(overlay), np.asarray(scene.image.convert("RGB")))  # nothing drawn
    assert np.array_equal(np.asarray(Image.open(pfile).convert("RGB")), np.asarray(scene.image.convert("RGB")))
    assert h.redraw(sess, True, True)[0].size == scene.image.size


def test_api_answer_with_no_object(scene, scene_file, monkeypatch):
    from app import api

    stream, _ = _fake_answer("There are no circles.")
    monkeypatch.setattr(model, "chat", _final(stream))
    text, history, objects, overlay = api.api_chat(scene_file, "Find all the circles.", "[]", "[]")
    assert text == "There are no circles." and objects == [] and len(history) == 2
    assert np.array_equal(np.asarray(overlay), np.asarray(scene.image.convert("RGB")))


def test_a_follow_up_about_it_carries_the_first_turn(scene, scene_file, monkeypatch):
    """"What color is it?" reaches the model with the turn that grounded "it", in the UI and through /chat."""
    from app import api

    o = scene.objects[0]
    found = Grounding(box=tuple(map(float, o.box)), mask=o.mask, phrase=f"the {o.color} {o.shape}")
    stream, calls = _fake_answer(f"<p>the {o.color} {o.shape}</p><loc>", [found])
    monkeypatch.setattr(model, "stream_chat", stream)
    monkeypatch.setattr(model, "chat", _final(stream))
    sess = h.set_image(h.new_session(), scene.image)[0]
    sess = run(h.chat(sess, f"Find the {o.color} {o.shape}."))[-1][0]
    run(h.chat(sess, "What color is it?"))
    assert calls[0]["history"] == [] and calls[1]["message"] == "What color is it?"
    assert [m["content"] for m in calls[1]["history"]] == [f"Find the {o.color} {o.shape}.",
                                                           f"<p>the {o.color} {o.shape}</p><loc>"]
    calls.clear()
    _, history, _, _ = api.api_chat(scene_file, f"Find the {o.color} {o.shape}.", "[]", "[]")
    _, history2, _, _ = api.api_chat(scene_file, "What color is it?", "[]", history)
    assert calls[1]["history"] == history and history2[:2] == history and len(history2) == 4


def test_a_click_offers_requests_about_the_new_region(scene):
    sess = h.set_image(h.new_session(), scene.image)[0]
    assert [s[0] for s in h.suggestions(sess).raw_samples] == list(fmt.FIRST_PROMPTS)
    sess, _, msg, _ = h.click(sess, "", h.MODE_OBJECT, None, select(*inside(scene.objects[0])))
    offered = [s[0] for s in h.suggestions(sess).raw_samples]
    assert "Find all the objects with the same color as <region1>." in offered  # the training data's wording
    sess, _, msg, _ = h.click(sess, msg, h.MODE_BOX, None, select(1, 1))
    sess, _, msg, _ = h.click(sess, msg, h.MODE_BOX, None, select(30, 30))
    assert "Find all the objects with the same color as <region2>." in [s[0] for s in h.suggestions(sess).raw_samples]
    assert h.use_suggestion(["What is <region2>?"]) == "What is <region2>?"


def test_the_suggestions_are_wired_and_private():
    from app import build_app

    demo = build_app()
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert "suggestions" in ids
    api = {d.get("api_name") for d in demo.config["dependencies"] if d.get("api_visibility") != "private"}
    assert api - {None} == {"chat", "segment_point"}
