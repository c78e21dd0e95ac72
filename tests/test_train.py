"""Trainer: a short run lowers the loss, writes an atomic checkpoint that reloads and resumes.
(Two-process DDP and DeepSpeed runs of the same loop: tests/test_engines.py.)"""

import json
from pathlib import Path

import pytest

from perception.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SMALL = {  # a smaller tiny model so the test takes seconds
    "backbone": {"text": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
                 "stem": {"channels": [8, 16, 32, 48], "token_grid": 10}},
    "mask_head": {"dim": 32},
}


def _cfg(tmp_path, steps, **kw):
    d = {"model": "tiny", "output_dir": str(tmp_path / "run"), "steps": steps, "batch_size": 4, "lr": 2e-3,
         "warmup": 2, "save_every": 10, "eval_every": 0, "model_overrides": SMALL,
         "data": {"num_workers": 0, "tasks": ["ground_A", "region_color"], "weights": [0.7, 0.3]}}
    d.update(kw)
    return TrainConfig.from_dict(d)


def test_short_run_lowers_loss_and_checkpoint_reloads(tmp_path):
    from perception.checkpoint import from_pretrained
    from perception.train import train

    out = train(_cfg(tmp_path, 30), progress=False)
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first * 0.8, (first, last)
    latest = out / (out / "latest").read_text().strip()
    assert latest.name == "checkpoint-000030"
    assert not list(out.glob(".*tmp*")), "temporary folders left behind"
    assert len(list(out.glob("checkpoint-*"))) <= 2
    model = from_pretrained(latest)
    assert model.config.backbone.text.hidden_size == 64
    # resume: the same command with more steps continues from step 30
    out = train(_cfg(tmp_path, 35), progress=False)
    steps = [json.loads(l)["step"] for l in open(out / "metrics.jsonl")]
    assert steps[-6:] == [30, 31, 32, 33, 34, 35][-6:] or steps[-5:] == [31, 32, 33, 34, 35]


def test_train_config_yaml_and_overrides(tmp_path):
    from perception.train import load_train_config

    tc = load_train_config(str(ROOT / "configs/tiny_shapesref.yaml"), ["steps=12", "data.num_workers=0", "deepspeed=configs/ds_zero2.json"])
    assert tc.steps == 12 and tc.data.num_workers == 0 and tc.deepspeed == "configs/ds_zero2.json"
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"stepz": 3})


def test_plots_take_stage_folders_or_metrics_files(tmp_path):
    from perception.plots import plot_run, read_stages

    for name, n in (("a", 60), ("b", 40)):
        d = tmp_path / name
        d.mkdir()
        with open(d / "metrics.jsonl", "w") as f:
            for s in range(1, n + 1):
                f.write(json.dumps({"step": s, "ce": 1.0 / s, "region_aux": 0.5}) + "\n")
            f.write(json.dumps({"step": n, "eval": {"acc_overall": 0.5}}) + "\n")
    rows, evals, starts = read_stages([tmp_path / "a", tmp_path / "b" / "metrics.jsonl"])
    assert starts == [0, 60] and rows[-1]["step"] == 100 and [e["step"] for e in evals] == [60, 100]
    out = plot_run([tmp_path / "a", tmp_path / "b" / "metrics.jsonl"])
    assert out == tmp_path / "b" / "metrics.png" and out.stat().st_size > 10_000
    (tmp_path / "c").mkdir()  # a run without periodic evaluation: the loss panel only
    (tmp_path / "c" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "ce": 1.0 / s}) + "\n" for s in range(1, 61)))
    out = plot_run(tmp_path / "c", tmp_path / "c.png")
    from PIL import Image

    w, h = Image.open(out).size
    assert w < 2 * h  # one panel, 6.5 x 4.2 inches (two are 12 x 4.2)


def test_frozen_parts_stay_frozen_and_unchanged_across_a_resume(tmp_path):
    """``freeze``: the frozen stem gets no update, and a resumed run freezes it again (its optimizer
    state has no slots for the frozen parameters)."""
    import torch

    from perception.checkpoint import from_pretrained
    from perception.train import train

    def stem(step):
        return from_pretrained(tmp_path / "run" / f"checkpoint-{step:06d}").backbone.stem.state_dict()

    train(_cfg(tmp_path, 4, save_every=2, freeze=["backbone.stem"]), progress=False)
    s2, s4 = stem(2), stem(4)
    out = train(_cfg(tmp_path, 6, save_every=2, freeze=["backbone.stem"]), progress=False)  # resumes from step 4
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps[-2:] == [5, 6]
    s6 = stem(6)
    assert all(torch.equal(s2[k], s4[k]) and torch.equal(s4[k], s6[k]) for k in s2)
    assert not torch.equal(from_pretrained(out / "checkpoint-000004").backbone.projector[0].weight,
                           from_pretrained(out / "checkpoint-000006").backbone.projector[0].weight)  # the rest trains


@pytest.mark.parametrize("v2", [False, True])
def test_the_periodic_evaluation_reports_v2_when_asked(tmp_path, tiny_model, v2):
    """training_eval: v1's headline numbers; with eval_v2 also N-acc, T-acc, follow-ups and same-as-region F1."""
    from perception.evaluate import training_eval

    out = training_eval(tiny_model, _cfg(tmp_path, 1, eval_scenes=2, eval_v2=v2))
    assert {"acc_overall", "f1", "count", "region", "click_mIoU"} <= set(out)
    v2_keys = {"n_acc", "t_acc", "followup", "same_as_region_f1"}
    assert (v2_keys <= set(out)) if v2 else not (v2_keys & set(out))
    assert all(0.0 <= out[k] <= 1.0 for k in v2_keys & set(out))


def test_the_data_cost_bench_measures_the_recipes_stream():
    """bench/data_cost.py (docs/BENCHMARKS.md): drawing and collating the v2 recipe's samples."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_cost", ROOT / "bench" / "data_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.measure(str(ROOT / "configs" / "tiny_shapesref_v2.yaml"), 3, 1)
    assert r["samples"] == 3 and r["batch_size"] == 16 and r["draw_ms"] > 0 and r["collate_ms"] > 0
    assert len(r["tasks"]) == 15 and all(v > 0 for v in r["tasks"].values())


def test_the_ablation_bench_runs_only_the_variants_asked_on_the_seeds_asked(tmp_path, monkeypatch):
    """bench/ablations.py --variants / --seed: only those variants train and are evaluated, with the
    recipe's overrides each, on scenes from the given seed (training and evaluation stubbed out)."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("ablations", ROOT / "bench" / "ablations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    trained, evaluated = [], []

    def train_until(name, overrides, out, steps, threads):
        trained.append((name, overrides, steps))
        (out / "x").mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "ce": 1.5}\n')
        return out / "x"

    def evaluate(name, model, out, args, extra):
        evaluated.append((name, args.seed, extra))
        return {"grounding": {"overall": {"acc@0.5": 0.5, "mIoU": 0.4}}}

    monkeypatch.setattr(mod, "train_until", train_until)
    monkeypatch.setattr(mod, "evaluate", evaluate)
    monkeypatch.setattr(mod, "plot", lambda results, steps, path: path.write_text("png"))
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    assert mod.main(["--variants", "bidirectional", "--seed", "12000000", "--steps", "20", "--out", "res"]) == 0
    assert trained == [("bidirectional", ["model_overrides.objects.bidirectional=true"], 20)]
    assert evaluated == [("bidirectional", 12_000_000, [])]
    summary = json.loads((tmp_path / "res" / "ablations.json").read_text())
    assert list(summary["variants"]) == ["bidirectional"] and summary["seed"] == 12_000_000
    assert summary["variants"]["bidirectional"]["metrics"]["Acc@0.5"] == 0.5
    assert summary["variants"]["bidirectional"]["curves"]["ce"] == [[1, 1.5]]


def test_training_is_deterministic_and_same_weights_tells_runs_apart(tmp_path):
    """The same config twice (a data worker beside it, as the recipe has) gives bitwise-equal
    checkpoints, which bench/same_weights.py reports as the same model; another seed differs, and a
    changed inference gate shows as a config difference."""
    import sys

    sys.path.insert(0, str(ROOT))
    from bench.same_weights import compare_folders, compare_states, config_differences
    from perception.train import train

    data = {"num_workers": 1, "tasks": ["ground_A", "region_color"], "weights": [0.7, 0.3]}
    runs = {name: train(_cfg(tmp_path, 3, output_dir=str(tmp_path / name), data=data, seed=seed), progress=False)
            / "checkpoint-000003" for name, seed in [("a", 0), ("b", 0), ("c", 1)]}
    same = compare_folders(runs["a"], runs["b"])
    assert same["equal"] and same["differ"] == 0 and same["tensors"] > 50 and same["config_differs"] == []
    other = compare_folders(runs["a"], runs["c"])
    assert not other["equal"] and other["differ"] > 0 and 0 < other["max_abs"] < float("inf") and other["worst"]
    import torch

    s = {"w": torch.zeros(2), "v": torch.ones(3)}
    rep = compare_states(s, {"w": torch.tensor([0.0, 0.5]), "v": torch.ones(4), "u": torch.zeros(1)})
    assert rep["differ"] == 2 and rep["worst"] == "v" and rep["max_abs"] == float("inf") and rep["only_b"] == ["u"]
    assert config_differences({"objects": {"match_gate": 0.35, "list_stop": True}, "seed": 0},
                              {"objects": {"match_gate": 0.2, "list_stop": True}}) == ["objects.match_gate", "seed"]
