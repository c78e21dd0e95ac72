"""The evaluator's metric functions on hand-made cases whose answers are worked out by hand."""

import json

import numpy as np
import pytest

from perception import metrics as M
from perception.data.sample import Turn
from perception.evaluate import Accumulator, format_comparison, format_table
from perception.types import Answer, Grounding


def test_box_iou_by_hand():
    assert M.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert M.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)  # half overlap
    assert M.box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert M.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # degenerate: no division by zero


def test_mask_iou_and_inter_union():
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3] = True  # 8 pixels, 4 shared
    assert M.mask_iou(a, b) == pytest.approx(4 / 12)
    assert M.mask_inter_union(a, b) == (4, 12)
    assert M.mask_inter_union(None, b) == (0, 8)  # no prediction: all of the truth is missed


def test_acc_miou_and_ciou_differ_as_defined():
    assert M.acc_at([0.5, 0.49, 0.9, 0.0]) == 0.5  # 0.5 counts as a hit
    assert M.acc_at([]) == 0.0 and M.miou([]) == 0.0
    # a small object missed, a big one hit: mIoU weighs them alike, cIoU by area
    inters, unions = [0, 90], [10, 100]
    assert M.miou([0 / 10, 90 / 100]) == pytest.approx(0.45)
    assert M.ciou(inters, unions) == pytest.approx(90 / 110)


def test_match_boxes_is_one_to_one():
    gt = [(0, 0, 10, 10), (20, 0, 30, 10)]
    assert M.match_boxes([(0, 0, 10, 10), (0, 0, 10, 10)], gt) == 1  # the same object twice counts once
    assert M.match_boxes([(20, 0, 30, 10), (0, 0, 10, 10)], gt) == 2  # order does not matter
    assert M.match_boxes([(0, 0, 10, 10)], []) == 0 and M.match_boxes([], gt) == 0
    # a box that overlaps both but neither at IoU >= 0.5 matches nothing
    assert M.match_boxes([(5, 0, 25, 10)], gt) == 0


def test_prf_by_hand():
    assert M.prf(2, 4, 2) == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3})
    assert M.prf(0, 0, 3) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_contains_words_matches_whole_words_only():
    assert M.contains_words("A small red circle.", ["small red circle"])
    assert M.contains_words("It is RED", ["red"])
    assert not M.contains_words("reddish", ["red"])
    assert not M.contains_words("a circle", ["small red circle"])
    assert M.contains_words("2 in total", ["2"]) and not M.contains_words("12 in total", ["2"])


def _ans(*boxes, text=""):
    return Answer(text=text, objects=[Grounding(box=b, mask=None) for b in boxes], history=[])


def test_accumulator_report_on_known_answers():
    mask = np.zeros((20, 40), bool)
    mask[0:10, 0:10] = True
    gt = {"boxes": [(0, 0, 10, 10), (20, 0, 30, 10)], "masks": [mask, np.roll(mask, 20, axis=1)]}
    acc = Accumulator()
    acc.add(gt, Turn(user="Find the red circle.", assistant="", targets=[0], task="ground_A"), _ans((0, 0, 10, 10)), seconds=0.01)
    acc.add(gt, Turn(user="Find the leftmost.", assistant="", targets=[1], task="ground_S"), _ans(), seconds=0.03)
    acc.add(gt, Turn(user="Find all.", assistant="", targets=[0, 1], task="ground_all"), _ans((0, 0, 10, 10), (0, 0, 10, 10), (50, 0, 60, 10)))
    acc.add(gt, Turn(user="How many?", assistant="", targets=[0, 1], task="count", expect=["2"]), _ans(text="2 in total"))
    acc.add(gt, Turn(user="What color is <region1>?", assistant="", task="region_color", expect=["red"]), _ans(text="red"))
    acc.add(gt, Turn(user="What shape is <region1>?", assistant="", task="region_shape", expect=["star"]), _ans(text="circle"))
    acc.add(gt, {"target": 0}, click_mask=mask)
    rep = acc.report()
    assert rep["grounding"]["A"]["acc@0.5"] == 1.0 and rep["grounding"]["S"]["acc@0.5"] == 0.0
    assert rep["grounding"]["overall"] == pytest.approx({"n": 2, "acc@0.5": 0.5, "mIoU": 0.0, "cIoU": 0.0,  # no masks predicted
                                                         "several_objects": 0.0})  # no A/S/R answer grounds two
    two = Accumulator()
    two.add(gt, Turn(user="Find the leftmost.", assistant="", targets=[0], task="ground_S"), _ans((0, 0, 10, 10), (50, 0, 60, 10)))
    two.add(gt, Turn(user="Find the red circle.", assistant="", targets=[0], task="ground_A"), _ans((0, 0, 10, 10)))
    assert two.report()["grounding"]["overall"]["several_objects"] == 0.5  # the first box counts; the extra object is reported
    # "all" + count: 3 + 0 predicted boxes, 1 match (the duplicate and the stray box do not), 4 objects
    assert rep["multi_object"] == pytest.approx({"n_gt": 4, "precision": 1 / 3, "recall": 1 / 4, "f1": 2 / 7})
    assert rep["counting_accuracy"]["accuracy"] == 1.0 and rep["region_accuracy"]["accuracy"] == 0.5
    assert rep["counting_accuracy"]["by_truth"] == {"2": {"n": 1, "accuracy": 1.0, "fewer": 0.0, "more": 0.0}}
    assert rep["region_accuracy"]["by"]["question:region_shape"]["accuracy"] == 0.0
    assert rep["click_mIoU"]["mIoU"] == 1.0 and rep["latency_ms_median"] == pytest.approx(20.0)
    assert "| grounding A: Acc@0.5 / mIoU / cIoU (n=1) | 1.000 / 0.000 / 0.000 |" in format_table(rep)


def test_counting_is_reported_by_true_count():
    """counting_accuracy.by_truth: per true count, right / states fewer / states more (no number: neither)."""
    gt = {"boxes": [(0, 0, 10, 10)] * 3, "masks": [np.zeros((4, 4), bool)] * 3}
    acc = Accumulator()
    for said in ("1 in total", "2 in total", "4 in total", "none", "3 in total"):
        acc.add(gt, Turn(user="How many?", assistant="", targets=[0, 1, 2], task="count", expect=["3"]), _ans(text=said))
    acc.add(gt, Turn(user="How many?", assistant="", targets=[0], task="count", expect=["1"]), _ans(text="1 in total"))
    c = acc.report()["counting_accuracy"]
    assert c["by_truth"]["3"] == pytest.approx({"n": 5, "accuracy": 0.2, "fewer": 0.4, "more": 0.2})
    assert c["by_truth"]["1"] == {"n": 1, "accuracy": 1.0, "fewer": 0.0, "more": 0.0}
    assert "| — count 3 (n=5): right / says fewer / says more | 0.200 / 0.400 / 0.200 |" in format_table(acc.report())


def test_compare_puts_reports_side_by_side(tmp_path, capsys):
    from perception.cli import main

    acc = Accumulator()
    rep = acc.report()
    rep_b = json.loads(json.dumps(rep))
    rep_b["region_accuracy"] = {"n": 1, "accuracy": 1.0, "by": {"question:region_color": {"n": 1, "accuracy": 1.0}}}
    table = format_comparison([rep, rep_b], ["old", "new"])
    assert "| region-question accuracy (n=0) | 0.000 | 1.000 |" in table
    assert "| — question region_color (n=1) | — | 1.000 |" in table  # a row one report lacks
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(rep))
    b.write_text(json.dumps(rep_b))
    assert main(["compare", str(a), str(b), "--names", "old", "new"]) == 0
    assert "| metric | old | new |" in capsys.readouterr().out
    b.write_text("{not json")
    assert main(["compare", str(a), str(b)]) == 2
    assert "cannot read report" in capsys.readouterr().err
    assert main(["compare", str(a), "--names", "x", "y"]) == 2
    assert "1 reports but 2 names" in capsys.readouterr().err


def test_says_none_and_rejects():
    assert M.says_none("There is no purple star.") and M.says_none("None.") and M.says_none("NOT here")
    assert not M.says_none("nothing") and not M.says_none("the noon star") and not M.says_none("another one")
    # counting must state 0 as a number of its own (SHAPESREF.md: "counting: states 0")
    assert M.says_none("There are no circles: 0 in total", counting=True) and M.says_none("0", counting=True)
    assert M.says_none("It is 0.", counting=True)
    assert not M.says_none("There are no circles", counting=True)
    assert not M.says_none("10 in total", counting=True) and not M.says_none("0.5", counting=True)
    assert M.rejects("There is no star.", 0) and not M.rejects("There is no star.", 1)
    assert not M.rejects("the star", 0)  # grounds nothing but does not say so


def test_has_tiny_object():
    one = np.zeros((8, 8), bool)
    one[3, 3] = True
    four, five = one.copy(), one.copy()
    four[3, 3:7] = True
    five[3, 3:8] = True
    assert M.has_tiny_object([one]) and M.has_tiny_object([five, four])
    assert not M.has_tiny_object([five]) and not M.has_tiny_object([]) and not M.has_tiny_object([None])


def _ans_masks(*masks, text=""):
    return Answer(text=text, objects=[Grounding(box=(0, 0, 1, 1), mask=m) for m in masks], history=[])


def test_accumulator_v2_metrics_on_known_answers():
    mask = np.zeros((20, 40), bool)
    mask[0:10, 0:10] = True
    a, b, c = (0, 0, 10, 10), (20, 0, 30, 10), (0, 10, 10, 20)
    gt = {"boxes": [a, b, c], "masks": [mask, np.roll(mask, 20, axis=1), np.roll(mask, 10, axis=0)]}
    dot = np.zeros((20, 40), bool)
    dot[5, 5] = True
    acc = Accumulator()
    T = lambda task, targets=(), expect=(), user="": Turn(user=user, assistant="", targets=list(targets),  # noqa: E731
                                                             task=task, expect=list(expect))
    # no target: right, grounds something (wrong), says nothing (wrong), counting with a 0 (right)
    acc.add(gt, T("ground_none"), _ans(text="There is no purple star."))
    acc.add(gt, T("ground_all_none"), _ans((0, 0, 10, 10), text="There are no circles."))
    acc.add(gt, T("ground_all_none"), _ans(text="the circle"))
    acc.add(gt, T("count_none", expect=["0"]), _ans(text="There are no stars: 0 in total"))
    # same as a region: none (counts toward N-acc, right) and two with targets
    acc.add(gt, T("same_as_region"), _ans(text="There are no other circles."))
    acc.add(gt, T("same_as_region", [1, 2]), _ans(b, (50, 0, 60, 10)))  # 1 of 2 right, 1 stray
    acc.add(gt, T("same_as_region", [1]), _ans(b))
    # a follow-up: turn 1 grounds the right object, turn 2 names the wrong colour; another right,
    # after a turn 1 that grounded nothing (the answer still counts: "it" may be known anyway)
    turn1 = T("ground_A", [0])
    acc.add_conversation(gt, [turn1, T("followup", expect=["red"], user="What color is it?")],
                         [_ans(a), _ans(text="blue")])
    acc.add_conversation(gt, [turn1, T("followup", expect=["small"], user="What size is it?")],
                         [_ans(), _ans(text="small")])
    # v1 turns with a target count toward T-acc; a 1-pixel object is counted as tiny
    acc.add(gt, T("ground_S", [1]), _ans_masks(dot))
    acc.add(gt, T("count", [0, 1], ["2"]), _ans(text="2 in total"))
    rep = acc.report()
    assert rep["no_target"]["n"] == 5 and rep["no_target"]["n_acc"] == pytest.approx(3 / 5)
    assert rep["no_target"]["by"]["ground_all_none"] == {"n": 2, "accuracy": 0.0}
    # with a target: same x2 (both ground), turn 1 x2 (1 of 2), ground_S (grounds), count (none)
    assert rep["target"]["n"] == 6 and rep["target"]["t_acc"] == pytest.approx(4 / 6)
    assert rep["followup"] == {"n": 2, "accuracy": 0.5, "turn1_acc@0.5": 0.5,
                               "by": {"color": {"n": 1, "accuracy": 0.0}, "size": {"n": 1, "accuracy": 1.0}}}
    # same as a region: 2 matches of 3 predicted boxes, 3 true objects
    assert rep["same_as_region"] == pytest.approx({"n": 2, "n_gt": 3, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert rep["tiny_objects"] == pytest.approx({"n_answers": 13, "share": 1 / 13})
    # follow-up turn 1 is context: it does not enter the v1 grounding numbers
    assert rep["grounding"]["S"]["n"] == 1 and "A" not in rep["grounding"]
    table = format_table(rep)
    assert "| N-acc: no-target requests that ground nothing and say so (n=5) | 0.600 |" in table
    assert "| same-as-region P / R / F1 (requests=2, objects=3) | 0.667 / 0.667 / 0.667 |" in table
    assert "| — color (n=1) | 0.000 |" in table


def test_compare_with_a_report_from_before_v2():
    """A report written before v2 (no v2 keys) still compares: its v2 cells are "—"."""
    old = Accumulator().report()
    for k in ("no_target", "target", "followup", "same_as_region", "tiny_objects"):
        del old[k]
    acc = Accumulator()
    acc.add({"boxes": [], "masks": []}, Turn(user="", assistant="", task="ground_none"), _ans(text="no"))
    table = format_comparison([old, acc.report()], ["v1", "v2"])
    assert "| N-acc: no-target requests that ground nothing and say so (n=1) | — | 1.000 |" in table
    assert "| answers holding an object of <= 4 pixels (n=1) | — | 0.000 |" in table
    assert "follow-up" not in table  # no follow-up asked in either report: no row


def test_evaluate_asks_follow_ups_with_the_models_own_history():
    """The evaluator chats like a user: turn 2 of a follow-up goes with turn 1's answer history."""
    from perception.data.shapesref import V2_TASKS
    from perception.evaluate import evaluate, shapesref_items

    items = list(shapesref_items(10_000_000, 0, v2_count=4))
    kinds = [t[-1].task if isinstance(t, list) else t.task for _, _, t in items]
    assert len(items) == 12 and set(kinds) <= set(V2_TASKS) and kinds.count("followup") == 4
    assert all(len(t) == 2 for _, _, t in items if isinstance(t, list))

    class Recorder:
        def __init__(self):
            self.calls = []

        def chat(self, image, message, history=None, regions=None):
            self.calls.append((message, history))
            return Answer(text="There are none: 0", objects=[], history=list(history or []) + [message])

    pipe = Recorder()
    rep = evaluate(pipe, iter(items), progress=False)
    follow = [(m, h) for m, h in pipe.calls if m.endswith("it?") or m == "Describe it."]
    assert len(follow) == 4 and all(h and len(h) == 1 for _, h in follow)  # turn 1's history came along
    assert rep["no_target"]["n_acc"] == 1.0 and rep["target"]["t_acc"] == 0.0 and rep["followup"]["accuracy"] == 0.0


def test_jsonl_follow_ups_are_asked_as_conversations(tmp_path):
    from perception.data.shapesref import write_dataset
    from perception.evaluate import jsonl_items

    path = write_dataset(tmp_path, seed=5, count=2, tasks=["followup", "region_color"], weights=[1, 0], n_requests=2)
    items = [t for _, _, t in jsonl_items(str(path))]
    assert len(items) == 4 and all(isinstance(t, list) and [x.task for x in t][1] == "followup" for t in items)


def test_evaluate_cli_rejects_a_negative_v2_count(capsys):
    from perception.cli import main

    assert main(["evaluate", "--v2-count", "-1"]) == 2
    assert "--v2-count must be >= 0" in capsys.readouterr().err


def test_evaluate_cli_reads_list_stop_as_on_or_off(capsys):
    """--list-stop takes on / off (a bool for objects.list_stop); anything else is refused by name."""
    from perception.cli import _on_off, main

    assert _on_off("on") is True and _on_off("off") is False
    with pytest.raises(SystemExit):
        main(["evaluate", "--list-stop", "maybe"])
    assert "--list-stop" in capsys.readouterr().err
