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
    assert rep["grounding"]["overall"] == pytest.approx({"n": 2, "acc@0.5": 0.5, "mIoU": 0.0, "cIoU": 0.0})  # no masks predicted
    # "all" + count: 3 + 0 predicted boxes, 1 match (the duplicate and the stray box do not), 4 objects
    assert rep["multi_object"] == pytest.approx({"n_gt": 4, "precision": 1 / 3, "recall": 1 / 4, "f1": 2 / 7})
    assert rep["counting_accuracy"]["accuracy"] == 1.0 and rep["region_accuracy"]["accuracy"] == 0.5
    assert rep["region_accuracy"]["by"]["question:region_shape"]["accuracy"] == 0.0
    assert rep["click_mIoU"]["mIoU"] == 1.0 and rep["latency_ms_median"] == pytest.approx(20.0)
    assert "| grounding A: Acc@0.5 / mIoU / cIoU (n=1) | 1.000 / 0.000 / 0.000 |" in format_table(rep)


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
