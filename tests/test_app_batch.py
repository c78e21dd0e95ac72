"""Batched ``/chat``: requests that arrive together are answered in one ``chat_batch`` call.

Unit tests of app/batching.py (a stub function, threads), then the app on 127.0.0.1 with the
shipped tiny model through gradio_client: the first request holds the model while the others
arrive, so they form one batch. Their answers must be exactly those of ``Pipeline.chat`` one at a
time, and a bad request among them gets its own error while the others are answered.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from app import model  # noqa: E402
from app.batching import Batcher  # noqa: E402
from conftest import free_port  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "app" / "examples"


def _until(cond, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Gate:
    """Wraps a batched function: its first call waits until open() (so later requests pile up)."""

    def __init__(self, fn):
        self.fn, self.opened, self.held = fn, threading.Event(), threading.Event()
        self.calls: list[list] = []

    def __call__(self, items):
        self.calls.append(list(items))
        if not self.opened.is_set():
            self.held.set()
            self.opened.wait(60)
        return self.fn(items)


def _submit_all(batcher, items, out: dict) -> list:
    """Submit each item from its own thread; out[item] gets its result or exception -> the threads."""

    def one(x):
        try:
            out[x] = batcher.submit(x)
        except Exception as e:  # noqa: BLE001 - the test looks at which exception each item got
            out[x] = e

    threads = [threading.Thread(target=one, args=(x,)) for x in items]
    for t in threads:
        t.start()
    return threads


# --- the batcher ---------------------------------------------------------------------------------


def test_items_that_arrive_together_form_one_batch_in_order():
    gate = Gate(lambda xs: [x * 10 for x in xs])
    b = Batcher(gate, max_size=3)
    out = {}
    first = _submit_all(b, [1], out)
    _until(gate.held.is_set, "the first batch")
    rest = []
    for k, x in enumerate([2, 3, 4, 5], 1):  # one after the other: a known arrival order
        rest += _submit_all(b, [x], out)
        _until(lambda: len(b._waiting) == k, f"{k} waiting items")
    gate.opened.set()
    for t in first + rest:
        t.join(30)
    assert out == {1: 10, 2: 20, 3: 30, 4: 40, 5: 50}
    assert list(b.sizes) == [1, 3, 1]  # at most max_size per call, in arrival order, the rest in the next one
    assert gate.calls == [[1], [2, 3, 4], [5]]
    _until(lambda: not b._working, "the worker to stop")  # no idle thread left behind


def test_a_failing_item_fails_alone():
    def fn(xs):
        if "bad" in xs:
            raise ValueError("bad is not a number")
        return [x.upper() for x in xs]

    gate = Gate(fn)
    b = Batcher(gate, max_size=8)
    out = {}
    first = _submit_all(b, ["a"], out)
    _until(gate.held.is_set, "the first batch")
    rest = _submit_all(b, ["b", "bad", "c"], out)
    _until(lambda: len(b._waiting) == 3, "three waiting items")
    gate.opened.set()
    for t in first + rest:
        t.join(30)
    assert out["a"] == "A" and out["b"] == "B" and out["c"] == "C"
    assert isinstance(out["bad"], ValueError) and "bad is not a number" in str(out["bad"])
    assert list(b.sizes) == [1, 3]
    assert sorted(map(tuple, gate.calls[2:])) == [("b",), ("bad",), ("c",)]  # the batch of 3 failed: each alone


def test_a_wrong_number_of_results_is_an_error_not_a_mix_up():
    b = Batcher(lambda xs: xs[:1], max_size=4)
    assert b.submit("x") == "x"
    b2 = Batcher(lambda xs: [], max_size=4)
    with pytest.raises(RuntimeError, match="returned 0 results for 1 requests"):
        b2.submit("x")


@pytest.mark.parametrize("size", [0, -1, 2.5, "4"])
def test_batch_size_must_be_a_positive_integer(size):
    with pytest.raises(ValueError, match="max_size"):
        Batcher(lambda xs: xs, size)


@pytest.mark.parametrize("value, ok", [("16", 16), ("1", 1), ("0", None), ("many", None), ("-3", None)])
def test_max_batch_setting(value, ok, monkeypatch):
    monkeypatch.setitem(model._settings, "max_batch", value)
    if ok is None:
        with pytest.raises(ValueError, match="PERCEPTION_MAX_BATCH"):
            model.max_batch()
    else:
        assert model.max_batch() == ok


# --- the app's /chat -----------------------------------------------------------------------------




@pytest.fixture(scope="module")
def served():
    """The app on 127.0.0.1 (tiny, CPU, batches of up to 8) with a Gate around the batched answers."""
    from app import build_app, launch

    before = model.settings()["max_batch"]
    model.configure("tiny", "cpu", max_batch=8)
    real = model._answer_batch
    gate = Gate(lambda reqs: real(reqs))
    mp = pytest.MonkeyPatch()
    mp.setattr(model, "_answer_batch", gate)
    pipe = model.get_pipeline()
    calls = []  # the number of requests of each chat_batch call
    mp.setattr(pipe, "chat_batch", _recording(pipe.chat_batch, calls))
    demo = build_app()
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", gate, pipe, calls
    finally:
        demo.close()
        mp.undo()
        model.configure(max_batch=before)


def _recording(fn, calls):
    def chat_batch(images, messages, **kw):
        calls.append(len(messages))
        return fn(images, messages, **kw)

    return chat_batch


def _ask_all(url, requests) -> list:
    """Send each (image path, message, regions JSON) from its own client and thread -> outcomes in order."""
    from gradio_client import Client, handle_file

    out = [None] * len(requests)
    clients = [Client(url, verbose=False) for _ in requests]

    def one(i):
        img, message, regions = requests[i]
        try:
            out[i] = clients[i].predict(handle_file(str(img)), message, regions, "[]", api_name="/chat")
        except Exception as e:  # noqa: BLE001 - each request's own outcome is checked
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    return out, threads


def _same(got, want) -> bool:
    """gradio_client's (text, history, objects, overlay) equals Pipeline.chat's answer (as JSON)."""
    from perception import answer_json

    text, history, objects, _ = got
    as_json = json.loads(json.dumps({"history": want.history, "objects": answer_json(want)}))
    return text == want.text and history == as_json["history"] and objects == as_json["objects"]


def test_requests_arriving_together_are_one_batch_and_answered_as_one_at_a_time(served):
    from perception import Region, load_image

    url, gate, pipe, calls = served
    point = (120, 80)
    reqs = [(EXAMPLES / "scene_0.png", "Find all the triangles.", "[]"),
            (EXAMPLES / "scene_1.png", "Find the red circle.", "[]"),
            (EXAMPLES / "scene_2.png", "What is <region1>?", json.dumps([{"point": list(point)}])),
            (EXAMPLES / "scene_3.png", "How many circles are there?", "[]"),
            (EXAMPLES / "scene_4.png", "Find all the objects.", "[]")]
    out, threads = _ask_all(url, reqs)
    threads[0].start()  # holds the model (the gate) ...
    _until(gate.held.is_set, "the first request to reach the model")
    for t in threads[1:]:  # ... while the four others arrive
        t.start()
    batcher = model._batcher()
    _until(lambda: len(batcher._waiting) == 4, "four requests waiting for the model")
    gate.opened.set()
    for t in threads:
        t.join(120)
    assert [len(c) for c in gate.calls] == [1, 4] and calls == [4]  # one chat_batch call for the four
    for (img, message, regions), got in zip(reqs, out):
        assert not isinstance(got, Exception), got
        rs = [Region(point=tuple(r["point"])) for r in json.loads(regions)]
        want = pipe.chat(load_image(img), message, regions=rs)
        assert _same(got, want), (message, got[0], want.text)


def test_a_bad_request_in_a_batch_gets_its_own_error(served, monkeypatch):
    from gradio_client.exceptions import AppError

    from perception import load_image

    url, gate, pipe, calls = served
    gate.opened.clear()
    gate.held.clear()
    gate.calls.clear()
    calls.clear()
    real_chat, real_batch = pipe.chat, pipe.chat_batch

    def refuse(messages):  # a request only the model rejects (the app's checks let it through)
        if any("octagon" in m for m in messages):
            raise ValueError("octagons are not a ShapesRef shape")

    monkeypatch.setattr(pipe, "chat", lambda img, msg, *a, **k: refuse([msg]) or real_chat(img, msg, *a, **k))
    monkeypatch.setattr(pipe, "chat_batch", lambda imgs, msgs, **k: refuse(msgs) or real_batch(imgs, msgs, **k))
    reqs = [(EXAMPLES / "scene_0.png", "Find the blue square.", "[]"),
            (EXAMPLES / "scene_1.png", "Find all the circles.", "[]"),
            (EXAMPLES / "scene_2.png", "Find the green octagon.", "[]"),  # fails in the model
            (EXAMPLES / "scene_3.png", "What is <region2>?", "[]"),  # fails the app's own checks
            (EXAMPLES / "scene_4.png", "Find the small star.", "[]")]
    out, threads = _ask_all(url, reqs)
    threads[0].start()
    _until(gate.held.is_set, "the first request to reach the model")
    for t in threads[1:]:
        t.start()
    batcher = model._batcher()
    _until(lambda: len(batcher._waiting) == 3, "three valid requests waiting (the fourth was refused before)")
    time.sleep(0.3)  # the refused one has had time to get its answer from the app's own checks
    gate.opened.set()
    for t in threads:
        t.join(120)
    assert isinstance(out[2], AppError) and "octagons are not a ShapesRef shape" in str(out[2])
    assert isinstance(out[3], AppError) and "<region2> refers to a region that does not exist" in str(out[3])
    # the refused one never reached the model; the batch of 3 failed on the octagon: each again alone
    assert [len(c) for c in gate.calls] == [1, 3, 1, 1, 1]
    for i in (0, 1, 4):
        img, message, _ = reqs[i]
        assert not isinstance(out[i], Exception), out[i]
        assert _same(out[i], real_chat(load_image(img), message)), message


def test_the_load_test_reads_the_batch_sizes_the_batcher_logs(tmp_path, caplog):
    """bench/load_test.py reports the server's batch sizes from its log: the line format is a contract."""
    import importlib.util
    import logging
    import sys

    spec = importlib.util.spec_from_file_location("load_test", Path(__file__).resolve().parent.parent / "bench" / "load_test.py")
    load_test = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = load_test
    spec.loader.exec_module(load_test)
    gate = Gate(lambda xs: xs)
    b = Batcher(gate, max_size=4)
    with caplog.at_level(logging.INFO, logger="app.batching"):
        out = {}
        threads = _submit_all(b, ["a"], out)
        _until(gate.held.is_set, "the first batch")
        for k, x in enumerate("bcd", 1):
            threads += _submit_all(b, [x], out)
            _until(lambda: len(b._waiting) == k, f"{k} waiting items")
        gate.opened.set()
        for t in threads:
            t.join(30)
    (tmp_path / "server.log").write_text("\n".join(r.getMessage() for r in caplog.records) + "\n")
    assert load_test._logged_batches(tmp_path) == list(b.sizes) == [1, 3]
    assert load_test._batch_summary([1, 3]) == {"count": 2, "mean_size": 2, "sizes": {1: 1, 3: 1}}
    assert load_test._logged_batches(None) is None
