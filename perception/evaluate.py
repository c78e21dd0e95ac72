"""The evaluator: ``python -m perception evaluate --model PATH --data shapesref --seed S --count N``.

Each ShapesRef scene (seed, seed+1, ...) is asked one grounding question (types A, S, R in turn),
"all the ...", a counting question, a region question and a click; answers are generated freely
(greedy), exactly as the app would. A JSONL dataset is evaluated turn by turn by each turn's task;
RefCOCO/+/g (``--data refcoco:ROOT:DATASET:SPLIT``) per expression, reported under the dataset's name.
Writes a JSON report and prints a table.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

from perception import metrics as M

GROUND_TYPES = ("ground_A", "ground_S", "ground_R")
REGION_TASKS = ("region_what", "region_describe", "region_color", "region_shape")


def shapesref_items(seed: int, count: int):
    """Yield (scene_index, Sample-like dict, Turn) for the evaluation protocol above."""
    from perception.data.shapesref import draw_scene, make_turn

    for i in range(count):
        rng = np.random.default_rng(seed + i)
        scene = draw_scene(rng)
        gt = {"image": scene.image, "boxes": [o.box for o in scene.objects], "masks": [o.mask for o in scene.objects]}
        tasks = [GROUND_TYPES[i % 3], "ground_all", "count", REGION_TASKS[i % 4], "click"]
        for task in tasks:
            if task == "click":
                k = int(rng.integers(len(scene.objects)))
                ys, xs = np.nonzero(scene.objects[k].mask)
                j = int(rng.integers(len(xs)))
                yield i, gt, {"task": "click", "point": (int(xs[j]), int(ys[j])), "target": k}
                continue
            turn = None
            for _ in range(10):  # S / R are impossible in some scenes: fall back along the list
                turn = make_turn(scene, rng, task)
                if turn is not None:
                    break
                if task in GROUND_TYPES:
                    task = GROUND_TYPES[(GROUND_TYPES.index(task) + 1) % 3]
            if turn is not None:
                yield i, gt, turn


def jsonl_items(path: str):
    from perception.data.jsonl import read_jsonl

    for i, s in enumerate(read_jsonl(path)):
        gt = {"image": s.image, "boxes": [tuple(b) for b in s.boxes], "masks": list(s.masks)}
        for t in s.turns:
            yield i, gt, t


REFCOCO_TASKS = ("refcoco", "refcoco+", "refcocog")  # RefCocoDataset turns carry the dataset name as their task


def parse_refcoco_spec(spec: str):
    """``refcoco:ROOT[:DATASET[:SPLIT]]`` -> (root, dataset, split); defaults refcoco, val."""
    rest = spec.split(":", 1)[1] if spec.startswith("refcoco:") else ""
    parts = rest.split(":")
    dataset, split = "refcoco", "val"
    if len(parts) >= 3 and parts[-2] in REFCOCO_TASKS:
        *root, dataset, split = parts
    elif len(parts) >= 2 and parts[-1] in REFCOCO_TASKS:
        *root, dataset = parts
    else:
        root = parts
    root = ":".join(root)
    if not root:
        raise ValueError(f"--data {spec!r}: expected refcoco:ROOT[:DATASET[:SPLIT]], e.g. refcoco:data/refcoco:refcoco:val")
    return root, dataset, split


def refcoco_items(root, dataset: str = "refcoco", split: str = "val"):
    """Yield (index, ground truth, Turn) per referring expression of a RefCOCO-family split.

    Scored under the grounding key ``dataset`` ("refcoco", "refcoco+", "refcocog"): Acc@0.5 (box IoU
    >= 0.5 of the first answered object) and cIoU (summed mask intersections / summed unions).
    """
    from perception.data.refcoco import RefCocoDataset

    return _dataset_items(RefCocoDataset(root, dataset=dataset, split=split))


def _dataset_items(ds):
    for i in range(len(ds)):
        s = ds[i]
        gt = {"image": s.image, "boxes": [tuple(b) for b in s.boxes], "masks": list(s.masks)}
        for t in s.turns:
            yield i, gt, t


class Accumulator:
    def __init__(self):
        self.ground = defaultdict(lambda: {"iou": [], "miou": [], "inter": [], "union": []})
        self.multi = {"match": 0, "pred": 0, "gt": 0}
        self.region = []
        self.region_by = defaultdict(list)  # "question:region_what", "kind:point", ... -> hits
        self.count = []
        self.count_answered = []  # the number the answer states (None: no number)
        self.click = []
        self.click_chat = []
        self.latency = []

    def add(self, gt, turn, answer=None, click_mask=None, seconds=None):
        if seconds is not None:
            self.latency.append(seconds)
        if isinstance(turn, dict):  # a click
            self.click.append(M.mask_iou(click_mask, gt["masks"][turn["target"]]))
            return
        task = turn.task
        objs = answer.objects
        if task in GROUND_TYPES or task.startswith("ground_") and task != "ground_all" or task == "click_seg" or task in REFCOCO_TASKS:
            k = turn.targets[0]
            g = self.ground[task.split("_")[-1] if task in GROUND_TYPES else task]
            box = objs[0].box if objs else None
            g["iou"].append(M.box_iou(box, gt["boxes"][k]) if box else 0.0)
            pm = objs[0].mask if objs else None
            inter, union = M.mask_inter_union(pm, gt["masks"][k])
            g["inter"].append(inter)
            g["union"].append(union)
            g["miou"].append(inter / union if union else 0.0)
        elif task in ("ground_all", "count"):
            pred = [o.box for o in objs]
            truth = [gt["boxes"][k] for k in turn.targets]
            self.multi["match"] += M.match_boxes(pred, truth)
            self.multi["pred"] += len(pred)
            self.multi["gt"] += len(truth)
            if task == "count":
                nums = [int(x) for x in __import__("re").findall(r"\d+", answer.text)]
                self.count.append(bool(nums) and nums[0] == len(turn.targets))
                self.count_answered.append((len(turn.targets), nums[0] if nums else None))
        elif task.startswith("region_"):
            hit = M.contains_words(answer.text, turn.expect)
            self.region.append(hit)
            self.region_by[f"question:{task}"].append(hit)
            if turn.regions:
                self.region_by[f"kind:{turn.regions[0].kind}"].append(hit)

    def report(self) -> dict:
        rep = {"grounding": {}}
        all_iou, all_miou, all_i, all_u = [], [], [], []
        for t in sorted(self.ground):
            g = self.ground[t]
            rep["grounding"][t] = {"n": len(g["iou"]), "acc@0.5": M.acc_at(g["iou"]), "mIoU": M.miou(g["miou"]), "cIoU": M.ciou(g["inter"], g["union"])}
            if t in ("A", "S", "R"):
                all_iou += g["iou"]; all_miou += g["miou"]; all_i += g["inter"]; all_u += g["union"]
        rep["grounding"]["overall"] = {"n": len(all_iou), "acc@0.5": M.acc_at(all_iou), "mIoU": M.miou(all_miou), "cIoU": M.ciou(all_i, all_u)}
        rep["multi_object"] = {"n_gt": self.multi["gt"], **M.prf(self.multi["match"], self.multi["pred"], self.multi["gt"])}
        rep["region_accuracy"] = {"n": len(self.region), "accuracy": float(np.mean(self.region)) if self.region else 0.0,
                                  "by": {k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(self.region_by.items())}}
        rep["counting_accuracy"] = {"n": len(self.count), "accuracy": float(np.mean(self.count)) if self.count else 0.0,
                                    "answered_1": float(np.mean([a == 1 for _, a in self.count_answered])) if self.count_answered else 0.0,
                                    "truth_1": float(np.mean([t == 1 for t, _ in self.count_answered])) if self.count_answered else 0.0}
        rep["click_mIoU"] = {"n": len(self.click), "mIoU": M.miou(self.click)}
        rep["latency_ms_median"] = 1000 * statistics.median(self.latency) if self.latency else 0.0
        return rep


def evaluate(pipe, items, progress: bool = True, total=None) -> dict:
    from tqdm import tqdm

    acc = Accumulator()
    for _, gt, turn in tqdm(items, disable=not progress, total=total, desc="evaluate"):
        t0 = time.perf_counter()
        if isinstance(turn, dict):
            mask = pipe.segment_point(gt["image"], turn["point"])
            acc.add(gt, turn, click_mask=mask, seconds=time.perf_counter() - t0)
        else:
            ans = pipe.chat(gt["image"], turn.user, regions=turn.regions)
            acc.add(gt, turn, answer=ans, seconds=time.perf_counter() - t0)
    return acc.report()


def _table_rows(rep: dict) -> dict:
    """A report -> {row key: (label, value text)}, in table order."""
    rows = {}
    for t, g in rep["grounding"].items():
        rows[f"ground:{t}"] = (f"grounding {t}: Acc@0.5 / mIoU / cIoU (n={g['n']})", f"{g['acc@0.5']:.3f} / {g['mIoU']:.3f} / {g['cIoU']:.3f}")
    m = rep["multi_object"]
    rows["multi"] = (f"multi-object P / R / F1 (objects={m['n_gt']})", f"{m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}")
    rows["region"] = (f"region-question accuracy (n={rep['region_accuracy']['n']})", f"{rep['region_accuracy']['accuracy']:.3f}")
    for k, v in rep["region_accuracy"].get("by", {}).items():
        rows[f"region:{k}"] = (f"— {k.replace(':', ' ')} (n={v['n']})", f"{v['accuracy']:.3f}")
    c = rep["counting_accuracy"]
    rows["count"] = (f"counting accuracy (n={c['n']})", f"{c['accuracy']:.3f}")
    if "answered_1" in c:
        rows["count:1"] = ("— answers that say 1 / questions whose count is 1", f"{c['answered_1']:.3f} / {c['truth_1']:.3f}")
    rows["click"] = (f"click-segmentation mIoU (n={rep['click_mIoU']['n']})", f"{rep['click_mIoU']['mIoU']:.3f}")
    rows["latency"] = ("median latency per turn", f"{rep['latency_ms_median']:.1f} ms")
    return rows


def format_comparison(reports: list, names: list) -> str:
    """Several reports side by side as one markdown table (a row a metric, a column a report; "—"
    where a report lacks the row). Labels (and their n) come from the first report that has the row."""
    if len(names) != len(reports):
        raise ValueError(f"{len(reports)} reports but {len(names)} names")
    tables = [_table_rows(r) for r in reports]
    keys = list(dict.fromkeys(k for t in sorted(tables, key=len, reverse=True) for k in t))  # the fullest report's order
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in keys:
        label = next(t[k][0] for t in tables if k in t)
        lines.append(f"| {label} | " + " | ".join(t[k][1] if k in t else "—" for t in tables) + " |")
    return "\n".join(lines)


def format_table(rep: dict) -> str:
    return format_comparison([rep], ["value"])


def compare_cli(args) -> int:
    """``python -m perception compare A.json B.json ... [--names a b ...]``: reports side by side."""
    reports = []
    for path in args.reports:
        try:
            with open(path) as f:
                reports.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: cannot read report {path}: {e}", file=sys.stderr)
            return 2
    names = args.names or [str(p) for p in args.reports]
    try:
        print(format_comparison(reports, names))
    except (KeyError, TypeError) as e:
        print(f"error: not an evaluation report ({e!r} missing)", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def training_eval(model, tc) -> dict:
    """Periodic evaluation inside the trainer: a flat dict of headline numbers."""
    from perception.pipeline import Pipeline

    pipe = Pipeline(model, model.device)
    rep = evaluate(pipe, shapesref_items(tc.eval_seed, tc.eval_scenes), progress=False)
    g = rep["grounding"]
    out = {f"acc_{t}": g[t]["acc@0.5"] for t in g}
    out.update({"mIoU": g["overall"]["mIoU"], "f1": rep["multi_object"]["f1"], "region": rep["region_accuracy"]["accuracy"],
                "count": rep["counting_accuracy"]["accuracy"], "click_mIoU": rep["click_mIoU"]["mIoU"]})
    return out


def run_cli(args) -> int:
    import perception

    pipe = perception.load_pipeline(args.model, device=args.device)
    if getattr(args, "box_source", None):
        pipe.model.config.box_head.source = args.box_source
    if getattr(args, "exclusive", None):
        pipe.model.config.mask_head.exclusive = args.exclusive == "on"
    if args.data == "shapesref":
        items, total = shapesref_items(args.seed, args.count), None
    elif args.data.startswith("refcoco:"):
        from perception.data.refcoco import RefCocoDataset

        root, dataset, split = parse_refcoco_spec(args.data)
        ds = RefCocoDataset(root, dataset=dataset, split=split)  # one expression per item
        items, total = _dataset_items(ds), len(ds)
    else:
        items, total = jsonl_items(args.data), None
    rep = evaluate(pipe, items, total=total)
    rep["model"] = args.model
    rep["box_source"] = pipe.model.config.box_head.source
    rep["exclusive"] = pipe.model.config.mask_head.exclusive
    rep["data"] = args.data if args.data != "shapesref" else {"shapesref_seed": args.seed, "scenes": args.count}
    print(format_table(rep))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rep, f, indent=1)
        print(f"report written to {args.out}")
    return 0
