"""The one training loop on its engines, executed on CPU: DDP and DeepSpeed ZeRO-2 on two ranks under
torchrun (in sync, only rank 0 writes, the loss falls, the saved folder answers like the in-memory
model), ZeRO-2 equal to single-process steps, lr_scale groups, bf16 autocast, gradient checkpointing,
and the DeepSpeed JSON checks.

The first DeepSpeed launch on a machine compiles a shared-memory op (~90 s, cached in
~/.cache/torch_extensions); later launches take seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perception.config import TrainConfig

from test_train import SMALL
from conftest import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "dist_driver.py"
ZERO2 = {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}}


def _tc_dict(tmp_path, **kw) -> dict:
    d = {"model": "tiny", "output_dir": str(tmp_path / "run"), "steps": 4, "batch_size": 2, "lr": 2e-3, "warmup": 2,
         "save_every": 2, "eval_every": 0, "model_overrides": SMALL, "threads": 1,
         "data": {"num_workers": 0, "tasks": ["ground_A", "region_color"], "weights": [0.7, 0.3]}}
    d.update(kw)
    return d


def _ds_json(tmp_path, **edits) -> str:
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({**ZERO2, **edits}))
    return str(p)




def _torchrun(tmp_path, mode: str, tc: dict, *extra, results="results", timeout=420) -> Path:
    """Run tests/dist_driver.py on 2 CPU ranks; returns its results folder."""
    cfg = tmp_path / f"{mode}-{results}.json"
    cfg.write_text(json.dumps(tc))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={free_port()}", str(DRIVER), mode, str(cfg), str(tmp_path / results), *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return tmp_path / results


# --- two ranks through the loop -------------------------------------------------------------------
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo runs on linux")
@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_two_ranks_through_the_loop(tmp_path, engine):
    """Ranks stay in sync, only rank 0 writes, the loss falls, the saved folder answers exactly like
    the in-memory model; DeepSpeed: a second launch resumes from its optimizer shards."""
    from perception.checkpoint import from_pretrained

    from dist_driver import answer_of, flat_params

    steps = 20
    kw = {"deepspeed": _ds_json(tmp_path)} if engine == "zero2" else {}
    tc = _tc_dict(tmp_path, steps=steps, save_every=steps // 2, eval_every=steps, **kw)
    res = _torchrun(tmp_path, "loop", tc)
    run = tmp_path / "run"

    p0, p1 = (torch.load(res / f"params-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(p0, p1), f"ranks diverged: max |diff| {float((p0 - p1).abs().max())}"
    assert (res / "writes-rank0.txt").read_text().split() == [str(steps // 2), str(steps)]
    assert not (res / "writes-rank1.txt").exists(), "rank 1 wrote a checkpoint"
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, steps + 1))  # one writer, every step once
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first * 0.85, (first, last)

    latest = run / (run / "latest").read_text().strip()
    state = json.loads((latest / "trainer_state.json").read_text())
    assert latest.name == f"checkpoint-{steps:06d}" and state["step"] == steps
    saved = from_pretrained(latest)
    assert torch.equal(flat_params(saved), p0), "the saved folder differs from the trained model"
    assert answer_of(saved) == json.loads((res / "answer.json").read_text())
    if engine == "zero2":
        assert state["deepspeed_tag"] == f"step{steps:06d}"
        assert sorted(p.name for p in (run / "deepspeed").glob("step*")) == [f"step{steps // 2:06d}", f"step{steps:06d}"]
        assert not (latest / "optimizer.pt").exists()
    else:
        assert (latest / "optimizer.pt").is_file()
        return  # resuming the plain engine: tests/test_train.py

    res2 = _torchrun(tmp_path, "loop", dict(tc, steps=steps + 2), results="resumed")
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r][-3:] == [steps, steps + 1, steps + 2]
    assert (res2 / "writes-rank0.txt").read_text().split() == [str(steps + 2)]
    assert sorted(p.name for p in (run / "deepspeed").glob("step*")) == [f"step{steps:06d}", f"step{steps + 2:06d}"]


# --- ZeRO-2 on 2 ranks == one process on the combined batch -------------------------------------------
def _single_process_reference(tc: TrainConfig, steps: int) -> tuple:
    """Plain AdamW on both ranks' batches at once: the gradient is the mean of the two ranks' mean
    losses' gradients (what data parallelism computes), clipped at ``tc.grad_clip``.
    Returns the flat parameters (before, after)."""
    from perception.data.collate import to_device
    from perception.train import build_model, lr_at, make_loader, param_groups

    from dist_driver import flat_params

    torch.manual_seed(tc.seed)
    model = build_model(tc).train()
    before = flat_params(model)
    its = [iter(make_loader(model, tc, r, 2, 0)) for r in (0, 1)]
    opt = torch.optim.AdamW(param_groups(model, tc), lr=tc.lr, betas=tuple(tc.betas))
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = tc.lr * g["lr_scale"] * lr_at(step, tc)
        opt.zero_grad()
        for it in its:
            (model(to_device(next(it), torch.device("cpu")))["loss"] / 2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
    return before, flat_params(model)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo runs on linux")
def test_zero2_on_two_ranks_equals_single_process_steps(tmp_path):
    """Three ZeRO-2 steps on 2 ranks (batch 2 each) = three AdamW steps on the 4 samples, with two
    lr_scale groups (DeepSpeed keeps them apart) and clipping at 0.1 (below the gradient norms)."""
    steps = 3
    d = _tc_dict(tmp_path, deepspeed=_ds_json(tmp_path, gradient_clipping=0.1), grad_clip=0.1,
                 lr_scale={"backbone.stem": 0.5})
    res = _torchrun(tmp_path, "steps", d, str(steps))
    p0, p1 = (torch.load(res / f"params-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(p0, p1), "ranks diverged"
    before, ref = _single_process_reference(TrainConfig.from_dict(dict(d, deepspeed=None)), steps)
    moved = float((ref - before).abs().max())
    assert moved > 1e-3, "the reference did not move; the comparison would say nothing"
    diff = float((p0 - ref).abs().max())
    assert diff < 1e-5, f"ZeRO-2 differs from the single-process reference by {diff} (parameters moved by {moved})"
    groups = json.loads((res / "groups-rank0.json").read_text())
    assert sorted({s for s, _ in groups}) == [0.5, 1.0]
    assert all(lr == pytest.approx(d["lr"] * s) for s, lr in groups)  # lr_at(2) = 1 after 2 warmup steps


# --- the GPU recipe's settings on the tiny path ---------------------------------------------------------
def _engine_and_batch(tc: TrainConfig):
    from perception.train import DistInfo, build_engine, build_model, make_loader

    torch.manual_seed(tc.seed)
    model = build_model(tc).train()
    batch = next(iter(make_loader(model, tc, 0, 1, 0)))
    return build_engine(model, tc, DistInfo()), batch


def test_bf16_autocast_on_cpu(tmp_path):
    """bf16: the LM's matmuls run in bf16, the weights stay fp32, and a short run still learns."""
    from perception.train import train

    tc = TrainConfig.from_dict(_tc_dict(tmp_path, bf16=True, steps=24, save_every=24, batch_size=4))
    engine, batch = _engine_and_batch(tc)
    dtypes = []
    linear = next(m for m in engine.model.backbone.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    loss = engine.forward(batch)["loss"]
    assert dtypes and set(dtypes) == {torch.bfloat16}
    before = linear.weight.detach().clone()
    engine.step(loss)
    assert linear.weight.dtype == torch.float32 and not torch.equal(linear.weight, before)

    out = train(tc, progress=False)
    losses = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    assert len(losses) == 24 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses


def test_gradient_checkpointing_recomputes_and_keeps_the_gradients(tmp_path):
    """The LLaVA code path (tiny-llava) with the presets' gradient checkpointing: every decoder layer
    runs again in backward, and the gradients equal those without checkpointing."""
    grads, calls = {}, {}
    for ckpt in (False, True):
        tc = TrainConfig.from_dict(_tc_dict(tmp_path, model="tiny-llava", lr=1e-3,
                                            model_overrides={"backbone": {"gradient_checkpointing": ckpt}}))
        engine, batch = _engine_and_batch(tc)
        layer = next(m for m in engine.model.modules() if type(m).__name__.endswith("DecoderLayer"))
        n = []  # the layer's MLP starts inside the checkpointed forward (the layer's own hooks stay outside;
        layer.mlp.register_forward_pre_hook(lambda *a: n.append(1))  # recomputation may stop before it returns)
        loss = engine.forward(batch)["loss"]
        in_forward = len(n)
        loss.backward()
        calls[ckpt] = (in_forward, len(n))
        grads[ckpt] = torch.cat([p.grad.reshape(-1) for p in engine.model.parameters() if p.grad is not None])
    assert calls[False][0] >= 1 and calls[False][1] == calls[False][0], calls
    assert calls[True][1] == 2 * calls[True][0], calls  # recomputed once in backward
    assert torch.allclose(grads[True], grads[False], rtol=1e-4, atol=1e-6)


# --- learning-rate groups -----------------------------------------------------------------------------
def test_lr_scale_groups_follow_the_schedule(tmp_path):
    from perception.train import lr_at

    tc = TrainConfig.from_dict(_tc_dict(tmp_path, lr_scale={"backbone": 0.1, "backbone.stem": 0.5}))
    engine, _ = _engine_and_batch(tc)
    names = {id(p): n for n, p in engine.model.named_parameters()}
    engine.set_lr(lr_at(0, tc))
    for g in engine.param_groups:
        want = 0.5 if all(names[id(p)].startswith("backbone.stem") for p in g["params"]) else \
            0.1 if all(names[id(p)].startswith("backbone") for p in g["params"]) else 1.0
        assert g["lr_scale"] == want and g["lr"] == pytest.approx(tc.lr * want * lr_at(0, tc))
    assert {g["lr_scale"] for g in engine.param_groups} == {0.1, 0.5, 1.0}


# --- the DeepSpeed JSON ---------------------------------------------------------------------------------
def test_shipped_deepspeed_config_matches_the_recipes():
    from perception.presets import get_preset
    from perception.train import check_deepspeed_config, load_train_config

    for name in ("llava7b_refcoco", "llava13b_refcoco"):
        tc = load_train_config(str(ROOT / "configs" / f"{name}.yaml"))
        ds = check_deepspeed_config(ROOT / "configs" / "ds_zero2.json", tc)
        assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and tc.bf16
        assert ds["gradient_clipping"] == tc.grad_clip and "optimizer" not in ds
        assert tc.data.source == "refcoco" and get_preset(tc.model).lora.r == 16


@pytest.mark.parametrize("edit, match", [
    ({"zero_optimization": {"stage": 4}}, "stage"),
    ({"train_micro_batch_size_per_gpu": 3}, "batch_size"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"zero_optimization": {"stage": "auto"}}, "auto"),
    ({"fp16": {"enabled": True}}, "both"),
    ({"bf16": {"enabled": False}}, "bf16"),
    ({"gradient_clipping": 0.5}, "grad_clip=1.0"),
    ({"gradient_clipping": None}, "explicitly"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 2e-5}}}, "'optimizer' section"),
    ({"scheduler": {"type": "WarmupLR"}}, "'scheduler' section"),
])
def test_deepspeed_config_validation(tmp_path, edit, match):
    from perception.train import check_deepspeed_config

    cfg = json.loads((ROOT / "configs" / "ds_zero2.json").read_text())
    cfg.update(edit)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        check_deepspeed_config(path, TrainConfig.from_dict(_tc_dict(tmp_path, batch_size=8, bf16=True, grad_clip=1.0)))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        check_deepspeed_config(path)
    with pytest.raises(ValueError, match="not found"):
        check_deepspeed_config(tmp_path / "missing.json")


def test_deepspeed_missing_or_stage3_is_a_clear_error(tmp_path, monkeypatch):
    from perception.train import train

    with pytest.raises(ValueError, match="stage 3"):
        train(TrainConfig.from_dict(_tc_dict(tmp_path, deepspeed=_ds_json(tmp_path, zero_optimization={"stage": 3}))),
              progress=False)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    with pytest.raises(ImportError, match="pip install deepspeed"):
        train(TrainConfig.from_dict(_tc_dict(tmp_path, deepspeed=_ds_json(tmp_path))), progress=False)
    with pytest.raises(ValueError, match="batch_size"):  # the config is checked first
        train(TrainConfig.from_dict(_tc_dict(tmp_path, batch_size=3, deepspeed=_ds_json(tmp_path))), progress=False)
