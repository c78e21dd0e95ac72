"""Real (GPU) presets checked without a GPU or a download: memory arithmetic, missing-weights errors,
the DeepSpeed config and loop (with a stand-in engine), RefCOCO evaluation, hub-id loading offline."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.memory import (
    KNOWN_BACKBONES,
    SAM_ENCODER_PARAMS,
    estimate_memory,
    format_estimate,
    log_memory_estimate,
    param_counts,
)
from perception.presets import PRESETS, get_preset

ROOT = Path(__file__).resolve().parent.parent
REAL = [p for p in PRESETS if get_preset(p).backbone.name_or_path]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No network and an empty Hub cache: nothing can be downloaded or found."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# --- memory estimates -----------------------------------------------------------------------------
def test_weights_by_dtype_and_quantisation():
    cfg = get_preset("llava-1.5-7b")
    bf16 = estimate_memory(cfg, training=False)
    assert 13.0 <= bf16["llm_weights"] + bf16["vision_tower"] <= 14.0  # 7.06B params x 2 bytes (the 14.1 GB download)
    sizes = {}
    for load_in in ("8bit", "4bit"):
        cfg.backbone.load_in = load_in
        sizes[load_in] = estimate_memory(cfg, training=False)["llm_weights"]
    assert sizes["4bit"] < sizes["8bit"] < bf16["llm_weights"]
    assert 6.0 < sizes["8bit"] < 7.0 and 3.0 < sizes["4bit"] < 4.5
    big = estimate_memory(get_preset("llava-1.5-13b"), training=False)
    assert 24.0 < big["llm_weights"] < 25.0 and big["total"] > bf16["total"]


def test_training_estimate_parts_move_the_right_way():
    cfg = get_preset("llava-1.5-7b")
    infer = estimate_memory(cfg, training=False, batch_size=8)
    train = estimate_memory(cfg, training=True, batch_size=8)
    assert train["total"] > infer["total"] and abs(sum(v for k, v in train.items() if k != "total") - train["total"]) < 0.01
    no_ckpt = estimate_memory(cfg, training=True, batch_size=8, gradient_checkpointing=False)
    assert no_ckpt["activations"] > 5 * train["activations"]
    frozen = estimate_memory(cfg, training=True, batch_size=8, sam_encoder_trainable=False)
    assert frozen["sam_activations"] < train["sam_activations"] and frozen["optimizer_states"] < train["optimizer_states"]
    z0 = estimate_memory(cfg, training=True, batch_size=8, zero_stage=0, world_size=8)
    z2 = estimate_memory(cfg, training=True, batch_size=8, zero_stage=2, world_size=8)
    assert z2["optimizer_states"] == pytest.approx(z0["optimizer_states"] / 8, rel=0.01)
    assert z2["gradients"] == pytest.approx(z0["gradients"] / 8, rel=0.01)
    assert estimate_memory(cfg, training=True, batch_size=1)["activations"] < train["activations"]
    text = format_estimate(train, "7B")
    assert text.startswith("7B") and "total" in text and "GiB" in text


def test_param_constants_agree_with_the_code():
    from perception.config import MaskHeadConfig
    from perception.heads.mask import SamMaskHead

    for variant, n in SAM_ENCODER_PARAMS.items():
        with torch.device("meta"):
            head = SamMaskHead(MaskHeadConfig(kind="sam", dim=256, sam_variant=variant), 64, {})
        built = sum(p.numel() for p in head.sam["image_encoder"].parameters())
        assert built == pytest.approx(n, rel=1e-3)
    assert KNOWN_BACKBONES["llava-1.5-7b-hf"].projector_params == pytest.approx(1024 * 4096 + 4096 + 4096 * 4096 + 4096, rel=1e-3)
    assert KNOWN_BACKBONES["llava-1.5-13b-hf"].projector_params == pytest.approx(1024 * 5120 + 5120 + 5120 * 5120 + 5120, rel=1e-3)
    counts = param_counts(get_preset("llava-1.5-7b"))
    assert counts["lora"] == 32 * 16 * (2 * 4096 + 2 * 4096)  # r=16 on q and v, 32 layers
    assert counts["trainable"] > counts["sam_encoder"] > 6e8


@pytest.mark.parametrize("preset", REAL)
def test_every_real_preset_has_an_estimate(preset):
    assert estimate_memory(get_preset(preset), training=True, batch_size=8)["total"] > 5


def test_unknown_backbones_and_the_cli(capsys):
    from perception.config import BackboneConfig
    from perception.memory import main

    with pytest.raises(ValueError, match="known"):
        estimate_memory(BackboneConfig(kind="llava", name_or_path="someone/other-model"), training=False)
    log_memory_estimate(BackboneConfig(kind="llava", name_or_path="someone/other-model"))
    log_memory_estimate(BackboneConfig(kind="llava", name_or_path="checkpoints/llava-1.5-7b-hf/", dtype="bfloat16"))
    assert main(["llava-1.5-13b", "--train", "--batch", "8", "--gpus", "8", "--zero", "2"]) == 0
    out, err = capsys.readouterr()
    assert "other-model" not in err and "llava-1.5-7b-hf" in err and "GiB" in err
    assert "llava-1.5-13b: LoRA training" in out and "total" in out


# --- missing weights -------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["llava-1.5-7b", "qwen2-vl-2b"])
def test_missing_weights_offline_name_the_download(preset, offline_hub, capsys):
    from perception.backbone import build_backbone
    from perception.pipeline import backbone_tokenizer

    cfg = get_preset(preset)
    name = cfg.backbone.name_or_path
    with pytest.raises(OSError) as e:
        build_backbone(cfg.backbone, 32100)
    msg = str(e.value)
    assert f"download {name}" in msg and "checkpoints/README.md" in msg
    assert "GiB" in capsys.readouterr().err  # the estimate is printed before the load is tried
    with pytest.raises(OSError, match="checkpoints/README.md"):
        backbone_tokenizer(cfg)
    assert not any(offline_hub.iterdir()), "nothing may be written to the Hub cache"


def test_checkpoints_readme_covers_every_download():
    text = (ROOT / "checkpoints" / "README.md").read_text()
    for preset in REAL:
        cfg = get_preset(preset)
        assert cfg.backbone.name_or_path in text
        assert cfg.mask_head.sam_checkpoint in text
    for original in ("sam_vit_h_4b8939.pth", "sam_vit_l_0b3195.pth", "sam_vit_b_01ec64.pth", "checkpoints/tiny/"):
        assert original in text


# --- RefCOCO evaluation ---------------------------------------------------------------------------
def _refcoco(root):
    try:
        from test_data_formats import _refcoco_fixture
    except ImportError:  # pragma: no cover
        pytest.skip("tests/test_data_formats.py's fixture builder is not importable")
    _refcoco_fixture(root)


@pytest.mark.parametrize("spec, want", [
    ("refcoco:data/refcoco:refcoco:val", ("data/refcoco", "refcoco", "val")),
    ("refcoco:/d/coco:refcoco+:testA", ("/d/coco", "refcoco+", "testA")),
    ("refcoco:data/x:refcocog", ("data/x", "refcocog", "val")),
    ("refcoco:data/x", ("data/x", "refcoco", "val")),
    ("refcoco:C:/data:refcoco:testB", ("C:/data", "refcoco", "testB")),
])
def test_parse_refcoco_spec(spec, want):
    from perception.evaluate import parse_refcoco_spec

    assert parse_refcoco_spec(spec) == want


def test_refcoco_items_are_scored_under_their_own_key(tmp_path):
    from perception.evaluate import Accumulator, refcoco_items
    from perception.types import Answer, Grounding

    _refcoco(tmp_path)
    items = list(refcoco_items(tmp_path, "refcoco", "train"))
    assert len(items) == 3 and {t.task for _, _, t in items} == {"refcoco"}
    acc = Accumulator()
    inter = union = 0
    for n, (_, gt, turn) in enumerate(items):
        box, mask = gt["boxes"][0], gt["masks"][0]
        if n == 0:  # perfect
            objs = [Grounding(box=box, mask=mask, phrase=None, score=1.0)]
            inter += mask.sum(); union += mask.sum()
        elif n == 1:  # right box, mask doubled to the right
            wide = mask | np.roll(mask, mask.shape[1] // 4, axis=1)
            objs = [Grounding(box=box, mask=wide, phrase=None, score=1.0)]
            inter += mask.sum(); union += wide.sum()
        else:  # no object
            objs = []
            union += mask.sum()
        acc.add(gt, turn, answer=Answer(text="", objects=objs, history=[], raw=""))
    rep = acc.report()["grounding"]["refcoco"]
    assert rep["n"] == 3 and rep["acc@0.5"] == pytest.approx(2 / 3)
    assert rep["cIoU"] == pytest.approx(inter / union)


def test_evaluate_cli_on_refcoco(tmp_path, tiny_model, monkeypatch):
    import perception
    from perception.cli import main
    from perception.pipeline import Pipeline

    _refcoco(tmp_path / "data")
    monkeypatch.setattr(perception, "load_pipeline", lambda *a, **k: Pipeline(tiny_model))
    out = tmp_path / "report.json"
    assert main(["evaluate", "--model", "tiny", "--data", f"refcoco:{tmp_path / 'data'}:refcoco:train", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["grounding"]["refcoco"]["n"] == 3 and rep["data"].startswith("refcoco:")


# --- hub id, offline ------------------------------------------------------------------------------
def _as_hub_cache(model, cache: Path, repo: str) -> str:
    """Save ``model`` and lay it out as huggingface_hub's cache does (blobs + snapshot symlinks + refs/main)."""
    from perception.checkpoint import save_pretrained

    src = save_pretrained(model, cache.parent / "saved")
    commit = hashlib.sha1(repo.encode()).hexdigest()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return commit


def _fingerprint(model, scene) -> str:
    from perception.pipeline import Pipeline

    ans = Pipeline(model).chat(scene.image, "Find the red circle.", max_new_tokens=8)
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return ans.raw + "|" + h.hexdigest()


def test_load_by_hub_id_offline(tiny_model, scene, offline_hub, tmp_path):
    from perception.pipeline import load_model

    _as_hub_cache(tiny_model, offline_hub, "user/repo")
    want = _fingerprint(tiny_model, scene)
    assert _fingerprint(load_model("user/repo"), scene) == want  # default cache (HF_HUB_CACHE)
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(OSError, match="user/repo"):
        load_model("user/repo", cache_dir=other)
    assert _fingerprint(load_model("user/repo", cache_dir=offline_hub), scene) == want


@pytest.mark.skipif(sys.platform != "linux", reason="symlinked cache layout")
def test_load_by_hub_id_with_hf_home_in_a_fresh_process(tiny_model, scene, tmp_path):
    """$HF_HOME/hub is where huggingface_hub looks when the environment says so at import time."""
    _as_hub_cache(tiny_model, tmp_path / "home" / "hub", "user/repo")
    code = ("import sys; sys.path.insert(0, 'tests'); from perception.pipeline import load_model;"
            "from test_real_presets import _fingerprint; from perception.data.shapesref import make_sample;"
            "print(_fingerprint(load_model('user/repo'), make_sample(123, tasks=['ground_A'])))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == _fingerprint(tiny_model, scene)
