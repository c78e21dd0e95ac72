"""The evaluator: ``python -m perception evaluate --model PATH --data shapesref --seed S --count N``.

Each ShapesRef scene (seed, seed+1, ...) is asked one grounding question (types A, S, R in turn),
"all the ...", a counting question, a region question and a click (v1). The first ``--v2-count``
scenes (default: as many) are also asked three v2 requests (SHAPESREF.md "v2"), drawn from a
separate random stream so the v1 requests stay those of v1: a no-target request (one object, "all
the ...", counting, in turn), a follow-up conversation (a one-object request, then "What color /
shape / size is it?" or "Describe it." asked with the model's own first answer as history) and a
same-as-a-region request. Answers are generated freely (greedy), exactly as the app would. A
JSONL dataset is evaluated turn by turn by each turn's task (a follow-up with the turn before it,
as a conversation); RefCOCO/+/g (``--data refcoco:ROOT:DATASET:SPLIT``) per expression, reported
under the dataset's name. Writes a JSON report and prints a table.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

from perception import metrics as M
from perception.data.shapesref import NO_TARGET_TASKS

GROUND_TYPES = ("ground_A", "ground_S", "ground_R")
REGION_TASKS = ("region_what", "region_describe", "region_color", "region_shape")
V2_STREAM = 2  # v2 requests of scene i come from default_rng([seed + i, V2_STREAM]), apart from v1's


OBJECT_GATES = ("match_gate", "list_gate", "list_doubt", "start_gate", "sure_gate", "region_sure_gate", "list_sure", "list_stop")  # ObjectTokensConfig's inference gates (perception/decoding.py)


def _count_by_truth(answered: list) -> dict:
    """Counting answers by their true count: {count: n, accuracy, and the shares that state fewer
    or more objects (an answer stating no number is neither)}; answered: (truth, stated or None)."""
    out = {}
    for t in sorted({t for t, _ in answered}):
        said = [a for tt, a in answered if tt == t]
        out[str(t)] = {"n": len(said), "accuracy": float(np.mean([a == t for a in said])),
                       "fewer": float(np.mean([a is not None and a < t for a in said])),
                       "more": float(np.mean([a is not None and a > t for a in said]))}
    return out


def shapesref_items(seed: int, count: int, v2_count: int = 0):
    """Yield (scene_index, ground truth, item) for the evaluation protocol above.

    item: a Turn, a click (dict with "point", "target") or a conversation (list of Turns, each
    asked with the answers before it as history). Scenes 0..count-1 get the v1 requests, scenes
    0..v2_count-1 the v2 ones (0: v1 only).
    """
    from perception.data.shapesref import draw_scene

    for i in range(max(count, v2_count)):
        rng = np.random.default_rng(seed + i)
        scene = draw_scene(rng)
        gt = {"image": scene.image, "boxes": [o.box for o in scene.objects], "masks": [o.mask for o in scene.objects]}
        if i < count:
            yield from _v1_items(i, scene, gt, rng)
        if i < v2_count:
            yield from _v2_items(i, scene, gt, np.random.default_rng([seed + i, V2_STREAM]))


def _v1_items(i, scene, gt, rng):
    from perception.data.shapesref import make_turn

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


def _v2_items(i, scene, gt, rng):
    """Scene i's v2 requests; the kinds cycle with i (an impossible no-target kind falls back along
    the list; "the {A phrase}" is always possible)."""
    from perception.data import shapesref_v2 as v2
    from perception.data.shapesref import REGION_KINDS

    for k in range(len(NO_TARGET_TASKS)):
        turn = v2.make_v2_turn(scene, rng, NO_TARGET_TASKS[(i + k) % len(NO_TARGET_TASKS)])
        if turn is not None:
            yield i, gt, turn
            break
    conversation = v2.make_followup(scene, rng, ground_task=GROUND_TYPES[i % 3],
                                    question=v2.FOLLOWUP_QUESTIONS[i % len(v2.FOLLOWUP_QUESTIONS)])
    if conversation is not None:
        yield i, gt, conversation
    yield i, gt, v2.same_as_region(scene, rng, attribute=v2.SAME_ATTRIBUTES[i % 2],
                                   region_kind=REGION_KINDS[(i // 2) % len(REGION_KINDS)])


def jsonl_items(path: str):
    from perception.data.jsonl import read_jsonl

    for i, s in enumerate(read_jsonl(path)):
        gt = {"image": s.image, "boxes": [tuple(b) for b in s.boxes], "masks": list(s.masks)}
        k = 0
        while k < len(s.turns):  # a follow-up is asked after the turn it follows, as a conversation
            if k + 1 < len(s.turns) and s.turns[k + 1].task == "followup":
                yield i, gt, s.turns[k:k + 2]
                k += 2
            else:
                yield i, gt, s.turns[k]
                k += 1


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
        self.no_target = defaultdict(list)  # task -> answered right (grounds nothing and says so)
        self.target = defaultdict(list)  # task -> grounds >= 1 object (requests with a target)
        self.followup = defaultdict(list)  # question kind -> the expected words appear
        self.followup_turn1 = []  # box IoU of the object turn 1 grounded (0: none)
        self.same = {"n": 0, "match": 0, "pred": 0, "gt": 0}  # same-as-a-region requests with >= 1 target
        self.tiny = []  # per chat answer: holds an object of <= 4 pixels
        self.ground_by_size = defaultdict(list)  # objects in the scene -> box IoU of A / S / R answers
        self.ground_several = []  # per A / S / R answer: it grounds more than the one object asked for
        self.proposals = {"found": 0, "objects": 0, "proposals": 0, "images": 0, "ious": []}  # object-token models

    def _score_presence(self, turn, answer):
        """N-acc / T-acc and the tiny-object share: every chat answer, conversation turns included."""
        self.tiny.append(M.has_tiny_object([o.mask for o in answer.objects]))
        if turn.task in NO_TARGET_TASKS or turn.task == "same_as_region" and not turn.targets:
            self.no_target[turn.task].append(M.rejects(answer.text, len(answer.objects), turn.task == "count_none"))
        elif turn.targets:
            self.target[turn.task].append(len(answer.objects) > 0)

    def add_conversation(self, gt, turns, answers, seconds=None):
        """A conversation, each turn answered with the answers before it as history. The earlier
        turns count toward N-acc / T-acc only; the last is scored as ``add`` scores a turn (a
        follow-up also records how well turn 1 grounded its object)."""
        for turn, answer in zip(turns[:-1], answers[:-1]):
            self._score_presence(turn, answer)
        self.add(gt, turns[-1], answers[-1], seconds=seconds)
        if turns[-1].task == "followup" and len(turns) > 1 and turns[-2].targets:
            box = answers[-2].objects[0].box if answers[-2].objects else None
            self.followup_turn1.append(M.box_iou(box, gt["boxes"][turns[-2].targets[0]]) if box else 0.0)

    def add(self, gt, turn, answer=None, click_mask=None, seconds=None):
        if seconds is not None:
            self.latency.append(seconds)
        if isinstance(turn, dict):  # a click
            self.click.append(M.mask_iou(click_mask, gt["masks"][turn["target"]]))
            return
        task = turn.task
        objs = answer.objects
        self._score_presence(turn, answer)
        if task in NO_TARGET_TASKS:
            return
        if task == "same_as_region":
            if turn.targets:
                pred = [o.box for o in objs]
                self.same["n"] += 1
                self.same["match"] += M.match_boxes(pred, [gt["boxes"][k] for k in turn.targets])
                self.same["pred"] += len(pred)
                self.same["gt"] += len(turn.targets)
            return
        if task == "followup":
            self.followup[_FOLLOWUP_KINDS.get(turn.user, turn.user)].append(M.contains_words(answer.text, turn.expect))
            return
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
            if task in GROUND_TYPES:
                self.ground_by_size[len(gt["masks"])].append(g["iou"][-1])
                self.ground_several.append(len(objs) > 1)
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
        if self.ground_several:
            rep["grounding"]["overall"]["several_objects"] = float(np.mean(self.ground_several))
        rep["grounding_by_objects"] = {str(n): {"n": len(v), "acc@0.5": M.acc_at(v)} for n, v in sorted(self.ground_by_size.items())}
        rep["multi_object"] = {"n_gt": self.multi["gt"], **M.prf(self.multi["match"], self.multi["pred"], self.multi["gt"])}
        rep["region_accuracy"] = {"n": len(self.region), "accuracy": float(np.mean(self.region)) if self.region else 0.0,
                                  "by": {k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(self.region_by.items())}}
        rep["counting_accuracy"] = {"n": len(self.count), "accuracy": float(np.mean(self.count)) if self.count else 0.0,
                                    "answered_1": float(np.mean([a == 1 for _, a in self.count_answered])) if self.count_answered else 0.0,
                                    "truth_1": float(np.mean([t == 1 for t, _ in self.count_answered])) if self.count_answered else 0.0,
                                    "by_truth": _count_by_truth(self.count_answered)}
        rep["click_mIoU"] = {"n": len(self.click), "mIoU": M.miou(self.click)}
        rep["no_target"] = {"n": sum(map(len, self.no_target.values())), "n_acc": _share(self.no_target),
                            "by": _by(self.no_target)}
        rep["target"] = {"n": sum(map(len, self.target.values())), "t_acc": _share(self.target), "by": _by(self.target)}
        rep["followup"] = {"n": sum(map(len, self.followup.values())), "accuracy": _share(self.followup),
                           "turn1_acc@0.5": M.acc_at(self.followup_turn1), "by": _by(self.followup)}
        rep["same_as_region"] = {"n": self.same["n"], "n_gt": self.same["gt"],
                                 **M.prf(self.same["match"], self.same["pred"], self.same["gt"])}
        rep["tiny_objects"] = {"n_answers": len(self.tiny), "share": float(np.mean(self.tiny)) if self.tiny else 0.0}
        p = self.proposals
        if p["images"]:
            rep["proposals"] = {"images": p["images"], "objects": p["objects"], "recall@0.5": p["found"] / max(1, p["objects"]),
                                "matched_mIoU": M.miou(p["ious"]), "per_image": p["proposals"] / p["images"]}
        rep["latency_ms_median"] = 1000 * statistics.median(self.latency) if self.latency else 0.0
        return rep

    def add_proposals(self, gt, proposals: list) -> None:
        """An object-token model's proposals for one scene (H x W bool masks), matched to its objects."""
        from perception.objects import proposal_recall

        _, ious = proposal_recall(proposals, list(gt["masks"]))
        p = self.proposals
        p["found"] += len(ious)
        p["ious"] += ious
        p["objects"] += len(gt["masks"])
        p["proposals"] += len(proposals)
        p["images"] += 1


def _share(groups: dict) -> float:
    """Share of True over every list of ``groups`` (0.0 when they are all empty)."""
    hits = [h for v in groups.values() for h in v]
    return float(np.mean(hits)) if hits else 0.0


def _by(groups: dict) -> dict:
    return {k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(groups.items()) if v}


def _followup_kinds() -> dict:
    from perception.data.shapesref_v2 import FOLLOWUPS

    return {question: kind for kind, (question, _, _) in FOLLOWUPS.items()}


_FOLLOWUP_KINDS = _followup_kinds()  # "What color is it?" -> "color"


def evaluate(pipe, items, progress: bool = True, total=None, batch_size: int = 1, proposals: str = "model") -> dict:
    """Answer every item and score it. ``batch_size`` > 1 answers the one-turn requests
    ``batch_size`` at a time with ``pipe.chat_batch`` (clicks and conversations one at a time);
    items are scored in their order, so the report is the same for any batch size but for
    ``latency_ms_median`` (a batched turn counts the batch's wall time divided by its size).

    Object-token models: with ``proposals`` "model" each scene's proposals are matched to its
    objects (the report's "proposals": recall at mask IoU 0.5, matched mIoU); "oracle" gives the
    scene's ground-truth masks as the object tokens instead (``Pipeline.use_objects``: the upper
    bound on selection; one request at a time)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    has_objects = check_proposals(pipe, proposals, batch_size)
    acc = Accumulator()
    pending = []  # [gt, turn, result or None, seconds] in item order; None: a one-turn request waiting for its batch
    scene = None
    for index, gt, turn in tqdm(items, disable=not progress, total=total, desc="evaluate"):
        if has_objects and proposals == "oracle":
            pipe.use_objects(gt["image"], gt["masks"])
        elif has_objects and gt is not scene and gt.get("masks") is not None:
            acc.add_proposals(gt, pipe.proposals(gt["image"]))
        scene = gt
        if batch_size > 1 and not isinstance(turn, (dict, list)):
            pending.append([gt, turn, None, None])
        else:
            pending.append(_answered(pipe, gt, turn))
        waiting = sum(e[2] is None for e in pending)
        if waiting == 0 or waiting >= batch_size:
            _flush(pipe, acc, pending)
    _flush(pipe, acc, pending)
    return acc.report()


def check_proposals(pipe, proposals: str, batch_size: int) -> bool:
    """ValueError unless ``proposals`` ("model" | "oracle") suits ``pipe`` and ``batch_size``;
    returns whether the pipeline's model has object tokens."""
    if proposals not in ("model", "oracle"):
        raise ValueError(f"proposals must be 'model' or 'oracle'; got {proposals!r}")
    has_objects = getattr(getattr(pipe, "model", None), "object_tokens", None) is not None
    if proposals == "oracle" and not has_objects:
        raise ValueError("oracle proposals need an object-token model (objects.enabled)")
    if proposals == "oracle" and batch_size > 1:
        raise ValueError("oracle proposals are given one request at a time: use batch_size 1")
    return has_objects


def _answered(pipe, gt, turn) -> list:
    """An item answered on its own: [gt, turn, result (mask, answers or answer), seconds]."""
    t0 = time.perf_counter()
    if isinstance(turn, dict):  # a click
        return [gt, turn, pipe.segment_point(gt["image"], turn["point"]), time.perf_counter() - t0]
    if not isinstance(turn, list):
        return [gt, turn, pipe.chat(gt["image"], turn.user, regions=turn.regions), time.perf_counter() - t0]
    answers, history = [], None
    for t in turn:  # a conversation: the user goes on from the model's own answers
        answers.append(pipe.chat(gt["image"], t.user, history=history, regions=t.regions))
        history = answers[-1].history
    return [gt, turn, answers, (time.perf_counter() - t0) / len(turn)]


def _flush(pipe, acc, pending: list) -> None:
    """Answer the waiting one-turn requests as one batch, then score everything pending in order."""
    wait = [e for e in pending if e[2] is None]
    if wait:
        t0 = time.perf_counter()
        answers = pipe.chat_batch([e[0]["image"] for e in wait], [e[1].user for e in wait],
                                  regions=[e[1].regions for e in wait])
        seconds = (time.perf_counter() - t0) / len(wait)
        for e, ans in zip(wait, answers):
            e[2:] = [ans, seconds]
    for e in pending:
        _score(acc, *e)
    pending.clear()


def _score(acc, gt, turn, result, seconds) -> None:
    if isinstance(turn, dict):
        acc.add(gt, turn, click_mask=result, seconds=seconds)
    elif isinstance(turn, list):
        acc.add_conversation(gt, turn, result, seconds=seconds)
    else:
        acc.add(gt, turn, answer=result, seconds=seconds)


def _table_rows(rep: dict) -> dict:
    """A report -> {row key: (label, value text)}, in table order."""
    rows = {}
    for t, g in rep["grounding"].items():
        rows[f"ground:{t}"] = (f"grounding {t}: Acc@0.5 / mIoU / cIoU (n={g['n']})", f"{g['acc@0.5']:.3f} / {g['mIoU']:.3f} / {g['cIoU']:.3f}")
    if "several_objects" in rep["grounding"].get("overall", {}):
        rows["ground_several"] = ("— A/S/R answers that ground more than one object",
                                  f"{rep['grounding']['overall']['several_objects']:.3f}")
    for n, g in rep.get("grounding_by_objects", {}).items():
        rows[f"ground_objects:{n}"] = (f"— A/S/R in scenes of {n} object(s): Acc@0.5 (n={g['n']})", f"{g['acc@0.5']:.3f}")
    m = rep["multi_object"]
    rows["multi"] = (f"multi-object P / R / F1 (objects={m['n_gt']})", f"{m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}")
    rows["region"] = (f"region-question accuracy (n={rep['region_accuracy']['n']})", f"{rep['region_accuracy']['accuracy']:.3f}")
    for k, v in rep["region_accuracy"].get("by", {}).items():
        rows[f"region:{k}"] = (f"— {k.replace(':', ' ')} (n={v['n']})", f"{v['accuracy']:.3f}")
    c = rep["counting_accuracy"]
    rows["count"] = (f"counting accuracy (n={c['n']})", f"{c['accuracy']:.3f}")
    if "answered_1" in c:
        rows["count:1"] = ("— answers that say 1 / questions whose count is 1", f"{c['answered_1']:.3f} / {c['truth_1']:.3f}")
    for t, v in c.get("by_truth", {}).items():
        rows[f"count:truth{t}"] = (f"— count {t} (n={v['n']}): right / says fewer / says more",
                                   f"{v['accuracy']:.3f} / {v['fewer']:.3f} / {v['more']:.3f}")
    rows["click"] = (f"click-segmentation mIoU (n={rep['click_mIoU']['n']})", f"{rep['click_mIoU']['mIoU']:.3f}")
    rows.update(_v2_rows(rep))
    p = rep.get("proposals")
    if p:
        rows["proposals"] = (f"proposals: recall@0.5 / matched mIoU / per image (objects={p['objects']})",
                             f"{p['recall@0.5']:.3f} / {p['matched_mIoU']:.3f} / {p['per_image']:.2f}")
    rows["latency"] = ("median latency per turn", f"{rep['latency_ms_median']:.1f} ms")
    return rows


def _v2_rows(rep: dict) -> dict:
    """The v2 rows of a report (none for a report written before v2; v2-only rows need n > 0)."""
    rows = {}
    nt, t = rep.get("no_target"), rep.get("target")
    if nt and nt["n"]:
        rows["n_acc"] = (f"N-acc: no-target requests that ground nothing and say so (n={nt['n']})", f"{nt['n_acc']:.3f}")
        for k, v in nt["by"].items():
            rows[f"n_acc:{k}"] = (f"— {k} (n={v['n']})", f"{v['accuracy']:.3f}")
    if t:
        rows["t_acc"] = (f"T-acc: requests with a target that ground >= 1 object (n={t['n']})", f"{t['t_acc']:.3f}")
    f = rep.get("followup")
    if f and f["n"]:
        rows["followup"] = (f"follow-up accuracy (n={f['n']})", f"{f['accuracy']:.3f}")
        rows["followup:turn1"] = ("— turn 1 Acc@0.5 (the object \"it\" is)", f"{f['turn1_acc@0.5']:.3f}")
        for k, v in f["by"].items():
            rows[f"followup:{k}"] = (f"— {k} (n={v['n']})", f"{v['accuracy']:.3f}")
    sa = rep.get("same_as_region")
    if sa and sa["n"]:
        rows["same"] = (f"same-as-region P / R / F1 (requests={sa['n']}, objects={sa['n_gt']})",
                        f"{sa['precision']:.3f} / {sa['recall']:.3f} / {sa['f1']:.3f}")
    tiny = rep.get("tiny_objects")
    if tiny:
        rows["tiny"] = (f"answers holding an object of <= 4 pixels (n={tiny['n_answers']})", f"{tiny['share']:.3f}")
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
    rep = evaluate(pipe, shapesref_items(tc.eval_seed, tc.eval_scenes, tc.eval_scenes if tc.eval_v2 else 0), progress=False)
    g = rep["grounding"]
    out = {f"acc_{t}": g[t]["acc@0.5"] for t in g}
    out.update({"mIoU": g["overall"]["mIoU"], "f1": rep["multi_object"]["f1"], "region": rep["region_accuracy"]["accuracy"],
                "count": rep["counting_accuracy"]["accuracy"], "click_mIoU": rep["click_mIoU"]["mIoU"]})
    if tc.eval_v2:
        out.update({"n_acc": rep["no_target"]["n_acc"], "t_acc": rep["target"]["t_acc"], "followup": rep["followup"]["accuracy"],
                    "same_as_region_f1": rep["same_as_region"]["f1"]})
    return out


def run_cli(args) -> int:
    import perception

    v2_count = args.count if getattr(args, "v2_count", None) is None else args.v2_count
    if v2_count < 0:
        print(f"error: --v2-count must be >= 0; got {v2_count}", file=sys.stderr)
        return 2
    batch_size = getattr(args, "batch_size", 1)
    if batch_size < 1:
        print(f"error: --batch-size must be >= 1; got {batch_size}", file=sys.stderr)
        return 2
    pipe = perception.load_pipeline(args.model, device=args.device)
    if getattr(args, "box_source", None):
        pipe.model.config.box_head.source = args.box_source
    if getattr(args, "exclusive", None):
        pipe.model.config.mask_head.exclusive = args.exclusive == "on"
    if getattr(args, "selection", None):
        pipe.model.config.objects.selection = args.selection
    for gate in OBJECT_GATES:  # the object-token decoding gates the command line may override
        if getattr(args, gate, None) is not None:
            setattr(pipe.model.config.objects, gate, getattr(args, gate))
    proposals = getattr(args, "proposals", "model")
    if args.data == "shapesref":
        items, total = shapesref_items(args.seed, args.count, v2_count), None
    elif args.data.startswith("refcoco:"):
        from perception.data.refcoco import RefCocoDataset

        root, dataset, split = parse_refcoco_spec(args.data)
        ds = RefCocoDataset(root, dataset=dataset, split=split)  # one expression per item
        items, total = _dataset_items(ds), len(ds)
    else:
        items, total = jsonl_items(args.data), None
    try:
        has_objects = check_proposals(pipe, proposals, batch_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = evaluate(pipe, items, total=total, batch_size=batch_size, proposals=proposals)
    rep["model"] = args.model
    if has_objects:
        oc = pipe.model.config.objects
        rep["objects"] = {"proposals": proposals, "selection": oc.selection, **{g: getattr(oc, g) for g in OBJECT_GATES}}
    rep["box_source"] = pipe.model.config.box_head.source
    rep["exclusive"] = pipe.model.config.mask_head.exclusive
    rep["data"] = args.data if args.data != "shapesref" else {"shapesref_seed": args.seed, "scenes": args.count,
                                                              "v2_scenes": v2_count}
    print(format_table(rep))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rep, f, indent=1)
        print(f"report written to {args.out}")
    return 0
