"""Run under ``torchrun --nproc_per_node=N tests/dist_driver.py MODE CONFIG.json RESULTS_DIR`` by
tests/test_engines.py. Not a test itself. Every rank writes what the test compares into RESULTS_DIR.

MODE ``loop``: ``perception.train.train`` on CONFIG. Records which rank called ``save_checkpoint``
(``writes-rank{R}.txt``), every rank's flat parameter vector after the last step (``params-rank{R}.pt``),
and rank 0's in-memory model's answer to a fixed prompt (``answer.json``, through ``eval_fn``).

MODE ``steps``: ``STEPS`` engine steps on each rank's first batches from ``make_loader`` (no loop, no
checkpoints), then ``params-rank{R}.pt`` and the optimizer groups' (lr_scale, lr) (``groups-rank{R}.json``).
"""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE, PROMPT = ROOT / "app" / "examples" / "scene_0.png", "Find the red circle."


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().float().reshape(-1).cpu() for p in model.parameters()])


def answer_of(model) -> dict:
    """The model's answer to the fixed prompt: raw text, boxes (x1, y1, x2, y2 in the example's pixels)
    and mask areas (pixels)."""
    from perception.pipeline import Pipeline

    a = Pipeline(model, model.device).chat(str(EXAMPLE), PROMPT, max_new_tokens=24)
    return {"raw": a.raw, "boxes": [list(map(float, o.box)) for o in a.objects],
            "mask_areas": [int(o.mask.sum()) if o.mask is not None else None for o in a.objects]}


def run_loop(tc, results: Path) -> None:
    import perception.train as T

    real_save = T.save_checkpoint

    def spy_save(model, step, *args, **kw):
        rank = T.DistInfo.from_env().rank
        with open(results / f"writes-rank{rank}.txt", "a") as f:
            f.write(f"{step}\n")
        return real_save(model, step, *args, **kw)

    def record_answer(model, tc):
        (results / "answer.json").write_text(json.dumps(answer_of(model)))
        return {}

    def record_params(model, rank):
        torch.save(flat_params(model), results / f"params-rank{rank}.pt")

    T.save_checkpoint = spy_save
    T.train(tc, eval_fn=record_answer, progress=False, on_end=record_params)


def run_steps(tc, results: Path, steps: int) -> None:
    from perception.train import DistInfo, build_engine, build_model, lr_at, make_loader
    from perception.data.collate import to_device

    info = DistInfo.from_env()
    torch.manual_seed(tc.seed)
    model = build_model(tc).train()
    it = iter(make_loader(model, tc, info.rank, info.world, 0))
    engine = build_engine(model, tc, info)
    try:
        for step in range(steps):
            engine.set_lr(lr_at(step, tc))
            engine.step(engine.forward(to_device(next(it), engine.device))["loss"])
        torch.save(flat_params(engine.model), results / f"params-rank{info.rank}.pt")
        groups = sorted((g["lr_scale"], g["lr"]) for g in engine.param_groups)
        (results / f"groups-rank{info.rank}.json").write_text(json.dumps(groups))
        engine.barrier()
    finally:
        engine.close()


if __name__ == "__main__":
    from perception.config import TrainConfig

    mode, config, results = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    results.mkdir(parents=True, exist_ok=True)
    tc = TrainConfig.from_dict(json.loads(config.read_text()))
    if mode == "loop":
        run_loop(tc, results)
    elif mode == "steps":
        run_steps(tc, results, int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}: loop | steps")
