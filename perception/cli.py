"""Command line: ``python -m perception {train,evaluate,compare,predict,make-data} ...``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m perception", description="PerceptionGPT: train, evaluate, predict.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config (single process or under torchrun)")
    t.add_argument("--config", required=True, help="configs/NAME.yaml")
    t.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override config fields, e.g. steps=100 data.num_workers=0")
    t.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config (ZeRO 0-2; GPU or CPU; pip install deepspeed, docs/TRAINING.md)")
    t.add_argument("--no-progress", action="store_true", help="hide the tqdm bar")

    e = sub.add_parser("evaluate", help="evaluate a model on ShapesRef scenes, a JSONL dataset or RefCOCO/+/g")
    e.add_argument("--model", default="tiny", help="preset name, checkpoint folder or hub id")
    e.add_argument("--data", default="shapesref",
                   help="'shapesref', a JSONL file, or refcoco:ROOT[:DATASET[:SPLIT]] (e.g. refcoco:data/refcoco:refcoco+:testA)")
    e.add_argument("--seed", type=int, default=10_000_000, help="first ShapesRef seed (held out: training uses 0..)")
    e.add_argument("--count", type=int, default=1000, help="ShapesRef scenes per task group")
    e.add_argument("--v2-count", type=int, default=None,
                   help="ShapesRef scenes also asked the v2 requests (a no-target request, a follow-up "
                        "conversation, a same-as-a-region request); default: --count; 0: v1 only")
    e.add_argument("--out", default=None, help="JSON report path")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=1,
                   help="answer this many one-turn requests together (Pipeline.chat_batch: the answers chat gives, faster); default 1")
    e.add_argument("--box-source", default=None, choices=["head", "mask"],
                   help="override the model's box source (ablation: the paper's MLP head, or the mask blob)")
    e.add_argument("--proposals", default="model", choices=["model", "oracle"],
                   help="object-token models: the model's own proposals (the report gives their recall) or the "
                        "scenes' ground-truth masks as object tokens (the upper bound on selection)")
    e.add_argument("--selection", default=None, choices=["pointer", "mask"],
                   help="object-token models: override objects.selection (mask: the <loc> state draws; pointer off)")
    e.add_argument("--match-gate", type=float, default=None,
                   help="object-token models with a match read-out: override objects.match_gate (a <loc> chooses "
                        "only objects the turn asks for with at least this probability; 0: off)")
    e.add_argument("--list-gate", type=float, default=None,
                   help="object-token models with a match read-out: override objects.list_gate (after a <loc> the "
                        "answer may not end while an object not grounded yet has at least this match probability; 0: off)")
    e.add_argument("--list-doubt", type=float, default=None,
                   help="override objects.list_doubt (list_gate holds only where the LM gives going on at least this)")
    e.add_argument("--start-gate", type=float, default=None,
                   help="override objects.start_gate (the answer must start grounding when a proposal scores this)")
    e.add_argument("--sure-gate", type=float, default=None,
                   help="override objects.sure_gate (where match_gate rules out every object, the answer may still "
                        "ground when the LM gives grounding at least this; 0: off)")
    e.add_argument("--region-sure-gate", type=float, default=None,
                   help="override objects.region_sure_gate (sure_gate on a turn that names a region; 0: the LM never "
                        "overrules the match scores there)")
    e.add_argument("--list-sure", type=float, default=None,
                   help="override objects.list_sure (after a <loc> the answer may not end while an object not grounded "
                        "yet has at least this match probability, whatever the LM gives; 0: off)")
    e.add_argument("--list-stop", default=None, type=_on_off, metavar="{on,off}",
                   help="override objects.list_stop (right after a <loc> with no object left to ground, the answer may only end)")
    e.add_argument("--exclusive", default=None, choices=["on", "off"],
                   help="override mask_head.exclusive: each object of an answer takes pixels no earlier one took")

    c = sub.add_parser("compare", help="print evaluation reports (JSON from evaluate --out) side by side")
    c.add_argument("reports", nargs="+", help="report JSON files")
    c.add_argument("--names", nargs="+", default=None, help="column names, one per report")

    pr = sub.add_parser("predict", help="answer one prompt about one image")
    pr.add_argument("image")
    pr.add_argument("prompt")
    pr.add_argument("--model", default="tiny")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--json", action="store_true", help="print the answer as JSON (boxes, RLE masks, phrases)")
    pr.add_argument("--out", default=None, help="write an overlay PNG here")

    d = sub.add_parser("make-data", help="write ShapesRef scenes to disk in the native JSONL format")
    d.add_argument("out_dir")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--count", type=int, default=100)

    args = p.parse_args(argv)
    if args.cmd == "train":
        from perception.train import load_train_config, train

        overrides = list(args.set) + ([f"deepspeed={args.deepspeed}"] if args.deepspeed else [])
        tc = load_train_config(args.config, overrides)
        from perception.evaluate import training_eval

        out = train(tc, eval_fn=training_eval, progress=not args.no_progress)
        print(f"checkpoints in {out}")
        return 0
    if args.cmd == "evaluate":
        from perception.evaluate import run_cli

        return run_cli(args)
    if args.cmd == "compare":
        from perception.evaluate import compare_cli

        return compare_cli(args)
    if args.cmd == "predict":
        return _predict(args)
    if args.cmd == "make-data":
        from perception.data.shapesref import write_dataset

        print(write_dataset(args.out_dir, args.seed, args.count))
        return 0
    return 2


def _on_off(value: str) -> bool:
    """An ``on`` / ``off`` command-line value as a bool."""
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


def _predict(args) -> int:

    import perception
    from perception.images import load_image
    from perception.render import answer_json, draw_overlay

    try:
        image = load_image(args.image)
        pipe = perception.load_pipeline(args.model, device=args.device)
        ans = pipe.chat(image, args.prompt)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"text": ans.text, "objects": answer_json(ans)}, indent=1))
    else:
        print(ans.text)
        for i, o in enumerate(ans.objects, 1):
            print(f"  object {i}: box={tuple(round(v, 1) for v in o.box)} phrase={o.phrase!r}")
    if args.out:
        draw_overlay(image, ans.objects).save(args.out)
    return 0
