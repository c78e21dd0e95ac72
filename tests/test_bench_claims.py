"""The text-box baseline (perception/baseline.py) and the claims benchmark (bench/claims.py --quick)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.baseline import box_text, parse_text_boxes, to_text_boxes
from perception.config import BackboneConfig, PerceptionConfig
from perception.geometry import ImageFrame
from perception.tokens import PERCEPTION_TOKEN

ROOT = Path(__file__).resolve().parent.parent
SMALL = {
    "backbone": {"text": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
                 "stem": {"channels": [8, 16, 32, 48], "token_grid": 10}},
    "mask_head": {"dim": 32},
}


@pytest.mark.parametrize("seed,task,mode", [
    (1, "ground_A", "stretch"), (2, "ground_all", "stretch"), (3, "count", "pad"), (4, "ground_all", "pad"),
    (5, "click_seg", "stretch"), (6, "region_color", "pad"),
])
def test_text_boxes_round_trip(seed, task, mode):
    from perception.data.shapesref import make_sample

    s = make_sample(seed, tasks=[task])
    answers = [t.assistant for t in s.turns]
    b = BackboneConfig(image_size=160, resize_mode=mode)
    t = to_text_boxes(s, b)
    frame = ImageFrame(*s.image.size, 160, mode)
    for before, after in zip(s.turns, t.turns):
        assert PERCEPTION_TOKEN not in after.assistant and after.targets == []
        objs = parse_text_boxes(after.assistant, frame)
        assert len(objs) == len(before.targets)
        for g, k in zip(objs, before.targets):
            got = frame.boxes_to_model(g.box)
            want = frame.boxes_to_model(s.boxes[k])
            assert np.abs(got - want).max() <= 0.01, (got, want)
            assert g.mask is None and g.phrase and g.phrase in before.assistant
    assert [t.assistant for t in s.turns] == answers  # the input sample is not modified


def test_box_text_format():
    assert box_text([0.123, 0.345, 0.5, 1.2]) == "[0.12,0.34,0.50,1.00]"
    assert box_text([-0.5, 0, 0, 0]) == "[0.00,0.00,0.00,0.00]"


@pytest.mark.parametrize("raw", [
    "", "[", "]", "[]", "[,,,]", "[1,2,3]", "[1,2,3,4,5]", "[a,b,c,d]", "[nan,0,1,1]", "[inf,0,1,1]",
    "[1e999,0,1,1]", "<p>the red circle</p>[0.1,0.2", "<p>unclosed [0.1,0.2,0.3,0.4]", "</p>[0.1, 0.2 ,0.3,0.4]</p>",
    "[[0.1,0.2,0.3,0.4]]", "[-5,-5,9,9]", "[0.9,0.9,0.1,0.1]", "[0.5,0.5,0.5,0.5]", "[" * 50_000,
    "<p>" * 20_000 + "[0.1,0.2,0.3,0.4]", "[0.1,0.2,0.3,0.4" + "]" * 10_000, "[0x1,0.2,0.3,0.4]", "\0[\0]",
    "[٣,0.2,0.3,0.4]", "<loc><loc>[0.1,0.2,0.3,0.4]<loc>",
])
@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_parse_text_boxes_never_crashes(raw, mode):
    frame = ImageFrame(300, 200, 160, mode)
    objs = parse_text_boxes(raw, frame, max_objects=12)
    assert len(objs) <= 12
    for g in objs:
        x1, y1, x2, y2 = g.box
        assert all(np.isfinite(g.box)) and 0 <= x1 <= x2 <= 300 and 0 <= y1 <= y2 <= 200
        assert g.mask is None


def test_parse_text_boxes_caps_objects():
    frame = ImageFrame(100, 100, 160)
    assert len(parse_text_boxes("[0.1,0.1,0.2,0.2]" * 30, frame, max_objects=5)) == 5


@pytest.fixture(scope="module")
def text_box_model(tiny_tokenizer):
    from perception.model import PerceptionModel
    from perception.presets import get_preset
    from perception.train import _deep_update

    cfg = PerceptionConfig.from_dict(_deep_update(get_preset("tiny").to_dict(), {**SMALL, "output_mode": "text_box"}))
    torch.manual_seed(0)
    return PerceptionModel(cfg, tiny_tokenizer)


def test_collator_text_box_mode_ce_only(text_box_model):
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample

    m = text_box_model
    col = Collator(m.config, m.tokenizer, m.backbone.num_image_tokens, clicks_per_image=3)
    batch = col([make_sample(i, tasks=["ground_all", "click_seg", "ground_A"]) for i in range(4)])
    assert not (batch["input_ids"] == m.loc_id).any()
    assert batch["loc_boxes"].shape[0] == 0 and batch["clicks"] is None
    out = m.train()(batch)
    assert set(out) == {"ce", "loss"}
    m.zero_grad(set_to_none=True)
    # grounding only (the benchmark's data): no region inputs, so the heads get no gradient at all
    # (with region questions the region encoder reads mask-head features, an input path)
    grounding = col([make_sample(i, tasks=["ground_all", "ground_A"]) for i in range(4)])
    m(grounding)["loss"].backward()
    grads = {n.split(".")[0] for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"backbone"}
    m.zero_grad(set_to_none=True)


def test_pipeline_text_box_objects(text_box_model):
    """The text_box answer decoder reads boxes from the generated text (no masks)."""
    from perception.decoding import answer_decoder
    from perception.pipeline import Pipeline

    m = text_box_model.eval()
    pipe = Pipeline(m, torch.device("cpu"))
    img = np.zeros((120, 200, 3), np.uint8)
    from PIL import Image

    image, (frame, state) = pipe._prepare(Image.fromarray(img))
    ids = m.prompts.assistant("<p>the red circle</p>[0.10,0.20,0.50,0.60]")
    objs = answer_decoder(m, state, frame, max_objects=12).objects(pipe._decode(ids))
    assert len(objs) == 1 and objs[0].mask is None and objs[0].phrase == "the red circle"
    assert np.allclose(objs[0].box, (20, 24, 100, 72))
    ans = pipe.chat(Image.fromarray(img), "Find the red circle")  # untrained: any text, never a crash
    assert all(o.mask is None for o in ans.objects)


def test_claims_quick_end_to_end(tmp_path):
    """--quick without --out writes to a temporary folder, never over the committed results."""
    committed = {p: p.read_bytes() for p in (ROOT / "bench" / "results").glob("claims*") if p.is_file()}
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TMPDIR=str(tmp_path))  # tempfile.gettempdir() in the script: the default quick folder lands here
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "claims.py"), "--quick"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {p: p.read_bytes() for p in committed} == committed, "the quick run changed bench/results"
    assert not (set((ROOT / "bench" / "results").glob("claims*")) - set(committed)), "the quick run wrote into bench/results"
    out = tmp_path / "perception-bench" / "claims-quick"
    assert "| metric |" in r.stdout
    png = out / "claims_acc.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((out / "claims.json").read_text())
    assert {"profile", "machine", "config", "modes", "claims", "targets", "definitions", "wall_seconds"} <= set(rep)
    assert rep["profile"] == "quick" and set(rep["modes"]) == {"perception", "text_box"}
    for mode, m in rep["modes"].items():
        assert {"acc_curve", "final_acc@0.5", "mask_mIoU", "trainable_params", "tokens_per_object", "latency_ms",
                "latency_forced_ms", "objects_answered", "peak_rss_mb", "param_bytes"} <= set(m)
        c = m["acc_curve"]
        assert c["steps"] and len(c["mean"]) == len(c["min"]) == len(c["max"]) == len(c["steps"])
        assert len(c["per_seed"]) >= 1
        assert set(m["latency_ms"]) == set(m["latency_forced_ms"]) == {"1", "3", "5"}
        assert {"generated", "reference"} <= set(m["tokens_per_object"])
        assert {"declared", "receiving_gradients"} <= set(m["trainable_params"])
        assert {"train", "inference"} <= set(m["peak_rss_mb"])
    # what does not depend on training: the heads get no gradients in text_box mode, and masks only exist in perception mode
    p, t = rep["modes"]["perception"], rep["modes"]["text_box"]
    assert t["trainable_params"]["receiving_gradients"] < p["trainable_params"]["receiving_gradients"]
    assert set(t["trainable_params"]["receiving_by_part"]) == {"backbone"}
    assert t["mask_mIoU"] is None and p["mask_mIoU"] is not None
    assert {"tokens_per_object_ratio", "speedup_at_3_objects", "acc_higher_every_checkpoint"} <= set(rep["claims"])
