"""The model-size sweep (bench/model_size.py) and its forced-answer helpers (bench/forced.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import forced, model_size  # noqa: E402


@pytest.fixture(scope="module")
def scenes():
    return {n: forced.count_scenes(n, 1)[0] for n in model_size.OBJECT_COUNTS}


@pytest.mark.parametrize("mode", model_size.MODES)
def test_time_answer_runs_the_forced_answer(tiny_tokenizer, scenes, mode):
    pipe = model_size.build_pipeline(model_size.QUICK_SIZES["h64"], mode, tiny_tokenizer)
    s = scenes[3]
    answer = forced.reference_answer(s, pipe.model.config)
    assert ("<loc>" in answer) == (mode == "perception") and answer.count("[") == (3 if mode == "text_box" else 0)
    with forced.last_cache(pipe.model) as box:
        done = forced.time_answer(pipe, s.image, s.turns[0].user, answer)
    assert done.steps == len(forced.answer_ids(pipe.model.prompts, answer)) and done.seconds > 0
    assert len(done.objects) == 3
    assert all((o.mask is None) == (mode == "text_box") for o in done.objects)
    # the cache after the answer: k and v per layer, (1, heads, prompt + answer without </s>, head_dim) fp32
    t = pipe.model.config.backbone.text
    prompt = len(pipe.model.prompts.encode([(s.turns[0].user, None)], add_generation_prompt=True).input_ids)
    assert forced.cache_bytes(box["past"]) == 2 * t.num_layers * (prompt + done.steps - 1) * t.hidden_size * 4
    assert "forward_embeds" not in vars(pipe.model.backbone)  # the recorder is gone after the block


def test_cache_bytes_kinds():
    k = torch.zeros(1, 2, 5, 8)
    assert forced.cache_bytes(((k, k), (k, k))) == 4 * k.numel() * 4
    assert forced.cache_bytes(None) == 0
    with pytest.raises(TypeError, match="dict"):
        forced.cache_bytes({"k": k})


def _synthetic_size(params, a, b, c, steps):
    """A measured size whose medians follow ms = a + b * steps + c * masks exactly."""
    modes = {}
    for mode in model_size.MODES:
        rows = {}
        for n in model_size.OBJECT_COUNTS:
            st = steps[mode][n]
            rows[str(n)] = {"steps": st, "median_ms": a + b * st + (c * n if mode == "perception" else 0.0)}
        modes[mode] = {"by_objects": rows}
    size = {"lm_parameters": params, "modes": modes}
    size["ratio"] = {str(n): modes["text_box"]["by_objects"][str(n)]["median_ms"]
                     / modes["perception"]["by_objects"][str(n)]["median_ms"] for n in model_size.OBJECT_COUNTS}
    size["fit"] = model_size.fit_size(size)
    return size


STEPS = {"perception": {1: 10, 3: 26, 5: 42}, "text_box": {1: 30, 3: 86, 5: 142}}


def test_fit_and_extrapolation_recover_a_known_cost_model():
    # a = 5 + 1e-8 P ms, b = 0.5 + 1e-9 P ms per step, c = 8 ms per mask
    truth = lambda p: (5 + 1e-8 * p, 0.5 + 1e-9 * p, 8.0)  # noqa: E731
    sizes = [_synthetic_size(p, *truth(p), STEPS) for p in (4e6, 1e8, 5e8)]
    for s, p in zip(sizes, (4e6, 1e8, 5e8)):
        a, b, c = truth(p)
        assert s["fit"]["a_ms"] == pytest.approx(a) and s["fit"]["b_ms_per_step"] == pytest.approx(b)
        assert s["fit"]["c_ms_per_mask"] == pytest.approx(c) and s["fit"]["max_abs_residual_ms"] < 1e-6
    fit = model_size.scaling_fit(sizes)
    a, b, c = truth(7e9)
    want = (a + b * 86) / (a + b * 26 + c * 3)
    assert model_size.predicted_ratio(fit, 7e9, 3) == pytest.approx(want)
    assert model_size.limit_ratio(fit, 3) == pytest.approx((1e-8 + 1e-9 * 86) / (1e-8 + 1e-9 * 26))
    # crossings: bracketed by measured sizes -> interpolated; beyond them -> solved on the fit
    lo, hi = sizes[0]["ratio"]["3"], sizes[1]["ratio"]["3"]
    mid = (lo + hi) / 2
    got = model_size.crossing(sizes, fit, 3, mid)
    assert got["how"].startswith("measured") and 4e6 < got["params"] < 1e8
    beyond = model_size.limit_ratio(fit, 3) - 0.05
    got = model_size.crossing(sizes, fit, 3, beyond)
    assert got["how"].startswith("extrapolated") and got["params"] > 5e8
    assert model_size.predicted_ratio(fit, got["params"], 3) == pytest.approx(beyond, rel=1e-6)
    assert model_size.crossing(sizes, fit, 3, 100.0)["params"] is None


def test_model_size_quick_end_to_end(tmp_path):
    """--quick runs in seconds and, without --out, writes to a temporary folder, never to bench/results."""
    results = ROOT / "bench" / "results"
    committed = {p: p.read_bytes() for p in results.glob("model_size*")}
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "model_size.py"), "--quick"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {p: p.read_bytes() for p in results.glob("model_size*")} == committed
    out = tmp_path / "perception-bench" / "model-size-quick"
    png = out / "model_size.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((out / "model_size.json").read_text())
    assert rep["profile"] == "quick" and "| LM (params) |" in r.stdout
    sizes = rep["sizes"]
    assert [s["name"] for s in sizes] == list(model_size.QUICK_SIZES)
    assert sizes[0]["lm_parameters"] < sizes[1]["lm_parameters"]
    for s in sizes:
        p, t = s["modes"]["perception"], s["modes"]["text_box"]
        # what does not depend on timing: the tokenizer's counts and the cache sizes
        assert t["location_tokens_per_object"] > 5 * p["location_tokens_per_object"]
        for n in ("1", "3", "5"):
            pb, tb = p["by_objects"][n], t["by_objects"][n]
            assert len(pb["seconds"]) == len(tb["cpu_seconds"]) == rep["config"]["reps"]
            assert tb["kv_cache_bytes"] / pb["kv_cache_bytes"] == pytest.approx(
                (tb["steps"] - 1 + tb["prompt_tokens"]) / (pb["steps"] - 1 + pb["prompt_tokens"]))
            assert s["ratio"][n] == pytest.approx(tb["median_ms"] / pb["median_ms"])
    summ = rep["summary"]
    assert set(summ["crossings"]) == {"1", "3", "5"} and all(np.isfinite(list(summ["predicted_ratio_at_7B"].values())))
