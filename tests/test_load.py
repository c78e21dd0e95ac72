"""The load test, short: 4 concurrent gradio_client users for ~8 s on the app in its own process (tiny model).

Each user has its own scene, regions and multi-turn history; no errors, no answer or history of
another user, and a replayed sample answered exactly as under load. The full run is
``python bench/load_test.py`` (16 users x 60 s; see docs/RELIABILITY.md).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def load_test():
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "bench" / "load_test.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_leak_rule(load_test):
    own = np.array([[10, 10, 50, 50]], float)
    other = np.array([[100, 100, 140, 140]], float)
    assert load_test.leaked_boxes([[101, 99, 141, 139]], own, other) == 1  # only another user's object
    assert load_test.leaked_boxes([[12, 12, 52, 52]], own, other) == 0  # its own object
    assert load_test.leaked_boxes([[0, 0, 200, 200]], own, other) == 0  # overlaps its own a little
    assert load_test.leaked_boxes([[300, 300, 320, 320]], own, other) == 0  # nobody's


def test_history_rule(load_test):
    u = load_test.User(0, 0, "x.png", np.zeros((0, 4)), None, None, sent={"Find the circle.", "Hi"})
    sent = [{"role": "user", "content": "Hi", "regions": []}, {"role": "assistant", "content": "a"}]
    mine = {"role": "user", "content": "Find the circle.", "regions": []}
    answer = {"role": "assistant", "content": "b"}
    assert load_test.history_problem(sent, sent + [mine, answer], "Find the circle.", [], u) is None
    foreign = {"role": "user", "content": "Find the star.", "regions": []}
    assert "not this user's" in load_test.history_problem(sent, sent + [foreign, answer], "Find the circle.", [], u)
    assert "changed" in load_test.history_problem(sent, [foreign, sent[1], mine, answer], "Find the circle.", [], u)
    assert "messages" in load_test.history_problem(sent, [mine, answer], "Find the circle.", [], u)


def test_four_users_no_errors_no_leaks(load_test):
    rep = load_test.run_load(users=4, seconds=8, model="tiny", device="cpu", replay_per_user=2)
    assert rep["errors"] == 0, rep["error_examples"]
    assert rep["leaks"] == 0 and rep["history_problems"] == 0, rep["history_examples"]
    assert rep["replayed"] >= 4 and rep["replay_mismatches"] == 0
    assert all(n >= 2 for n in rep["per_user_requests"])  # everyone got a warm-up answer and a turn under load
    assert rep["max_history_messages"] >= 2  # multi-turn: histories were passed back


def test_malloc_arena_cap(monkeypatch):
    from app.allocator import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False, "an explicit MALLOC_ARENA_MAX must win"
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if sys.platform.startswith("linux"):
        assert limit_malloc_arenas() is True
