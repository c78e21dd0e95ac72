"""ShapesRef generator against the spec (SHAPESREF.md), with an independent expression checker."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from perception.data import shapesref as sr
from perception.data.jsonl import read_jsonl
from perception.data.sample import Sample, Turn
from perception.geometry import box_from_mask
from perception.tokens import grounded, parse_answer
from perception.types import Region

SEEDS = list(range(24))
BASE = {
    "red": (215, 45, 45), "green": (50, 165, 70), "blue": (45, 90, 215),
    "yellow": (235, 205, 40), "purple": (145, 65, 185), "orange": (240, 135, 30),
}
SHAPE_WORDS = {"circle", "square", "triangle", "star", "hexagon"}
SIZE_WORDS = {"small", "large"}


# --- an independent reading of expressions ---------------------------------------------------


def _attrs(phrase: str) -> dict:
    """Parse an attribute phrase (without "the") into the attributes it names; check its form."""
    words = phrase.split()
    forms = {  # the five attribute phrases of the spec
        ("color", "shape"), ("size", "color", "shape"), ("shape",), ("color", "object"), ("size", "shape"),
    }
    kinds = tuple("size" if w in SIZE_WORDS else "color" if w in BASE else "shape" if w in SHAPE_WORDS
                  else "object" if w == "object" else "?" for w in words)
    assert kinds in forms, f"not an attribute phrase: {phrase!r}"
    return {k: w for k, w in zip(kinds, words) if k != "object"}


def _matches(obj: dict, attrs: dict) -> bool:
    return all(obj[k] == v for k, v in attrs.items())


def _scene_view(sample: Sample) -> list[dict]:
    """Objects as the checker sees them: attributes from labels, positions from the masks."""
    out = []
    for label, m in zip(sample.labels, sample.masks):
        size, color, shape = label.split()
        x1, y1, x2, y2 = box_from_mask(m)
        out.append({"size": size, "color": color, "shape": shape, "pos": ((x1 + x2) / 2, (y1 + y2) / 2)})
    return out


REL = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
SUP = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "bottommost": (1, 1)}


def resolve(expr: str, objs: list[dict], W: int, H: int) -> int:
    """The index of the one object ``expr`` picks out; AssertionError if it is not exactly one."""
    m = re.fullmatch(r"the (.+?) (left of|right of|above|below) the (.+)", expr)
    if m:
        a1, rel, a2 = _attrs(m.group(1)), m.group(2), _attrs(m.group(3))
        axis, sign = REL[rel]
        margin = 0.05 * (W if axis == 0 else H)
        anchors = [i for i, o in enumerate(objs) if _matches(o, a2)]
        assert len(anchors) == 1, f"{expr!r}: anchor names {len(anchors)} objects"
        b = objs[anchors[0]]["pos"][axis]
        cands = [i for i, o in enumerate(objs) if _matches(o, a1)]
        strict = [i for i in cands if sign * (objs[i]["pos"][axis] - b) > margin]
        loose = [i for i in cands if sign * (objs[i]["pos"][axis] - b) > 0]
        assert len(strict) == 1 and loose == strict, f"{expr!r}: {strict} with margin, {loose} without"
        return strict[0]
    m = re.fullmatch(r"the (leftmost|rightmost|topmost|bottommost) (.+)", expr)
    if m:
        attrs = _attrs(m.group(2))
        assert set(attrs) in ({"shape"}, {"color"}, {"color", "shape"}), expr
        axis, sign = SUP[m.group(1)]
        # sort so that the extreme comes first (leftmost: smallest cx; rightmost: largest)
        vals = sorted((-sign * o["pos"][axis], i) for i, o in enumerate(objs) if _matches(o, attrs))
        assert len(vals) >= 2, f"{expr!r}: superlative over {len(vals)} object(s)"
        assert vals[1][0] - vals[0][0] >= 0.05 * (W if axis == 0 else H), f"{expr!r}: margin too small"
        return vals[0][1]
    m = re.fullmatch(r"the (.+)", expr)
    assert m, expr
    cands = [i for i, o in enumerate(objs) if _matches(o, _attrs(m.group(1)))]
    assert len(cands) == 1, f"{expr!r}: names {len(cands)} objects"
    return cands[0]


GROUND_RE = re.compile(r"(Where is|Find|Locate|Segment|Show me|Point out) (the .+?)[?.]?")


def _group(noun: str, objs: list[dict]) -> tuple[list[int], str]:
    """ "circles" / "red objects" -> (matching objects left to right, the singular noun)."""
    if noun.endswith(" objects"):
        color = noun[: -len(" objects")]
        assert color in BASE, noun
        match = [i for i, o in enumerate(objs) if o["color"] == color]
    else:
        assert noun.endswith("s") and noun[:-1] in SHAPE_WORDS, noun
        match = [i for i, o in enumerate(objs) if o["shape"] == noun[:-1]]
    return sorted(match, key=lambda i: objs[i]["pos"]), noun[:-1]


def _asked_noun(turn: Turn) -> str:
    """The plural noun of an "all the ..." or "How many ... are there?" request."""
    if turn.task.startswith("count"):
        m = re.fullmatch(r"How many (.+) are there\?", turn.user)
    else:
        m = re.fullmatch(r"(Find|Segment|Show me) all the (.+?)[?.]?", turn.user)
    assert m, turn.user
    return m.group(m.lastindex)


def check_turn(sample: Sample, turn: Turn, prev: Turn | None = None) -> None:
    """Every task's turn against the spec and docs/SHAPESREF.md's answer formats. ``prev``: the
    turn before (a follow-up is about the object it grounded)."""
    objs = _scene_view(sample)
    W, H = sample.image.size
    assert turn.task in sr.TASKS
    if turn.task in ("ground_none", "ground_all_none", "count_none", "followup", "same_as_region"):
        check_v2_turn(sample, turn, prev)
        return
    if turn.task in ("ground_A", "ground_S", "ground_R"):
        user = turn.user[0].upper() + turn.user[1:]
        m = GROUND_RE.fullmatch(user)
        assert m, turn.user
        expr = m.group(2)
        assert turn.assistant == grounded(expr)
        assert turn.targets == [resolve(expr, objs, W, H)]
        kind = "R" if re.search(r" (left of|right of|above|below) the ", expr) else \
            "S" if re.match(r"the (leftmost|rightmost|topmost|bottommost) ", expr) else "A"
        assert turn.task == f"ground_{kind}"
        assert not turn.regions and not turn.expect
    elif turn.task in ("ground_all", "count"):
        match, one = _group(_asked_noun(turn), objs)
        assert match, "asked about a count of zero"
        listing = ", ".join(grounded(f"the {one}") for _ in match)  # named by the question's noun
        assert turn.targets == match
        if turn.task == "count":
            assert turn.assistant == f"{listing}: {len(match)} in total" and turn.expect == [str(len(match))]
        else:
            assert turn.assistant == listing
    else:
        assert len(turn.regions) == 1
        r = turn.regions[0]
        if turn.task == "click_seg":
            assert turn.user == "Segment <region1>." and r.kind == "point"
            (i,) = turn.targets
            assert turn.assistant == grounded(f"the {sample.labels[i]}")
        else:
            owners = [i for i in range(len(objs)) if _region_is(r, sample, i)]
            assert len(owners) >= 1
            i = owners[0]
            size, color, shape = sample.labels[i].split()
            want = {
                "region_what": ("What is <region1>?", f"a {sample.labels[i]}", sample.labels[i]),
                "region_describe": ("Describe <region1>.", f"a {sample.labels[i]}", sample.labels[i]),
                "region_color": ("What color is <region1>?", color, color),
                "region_shape": ("What shape is <region1>?", shape, shape),
            }[turn.task]
            assert (turn.user, turn.assistant, turn.expect) == (want[0], want[1], [want[2]])
            assert turn.targets == [] and "<loc>" not in turn.assistant
        if r.kind == "point":
            x, y = r.point
            assert sample.masks[turn.targets[0] if turn.targets else owners[0]][int(y), int(x)]
        return
    assert parse_answer(turn.assistant).phrases.count(None) == 0


def check_v2_turn(sample: Sample, turn: Turn, prev: Turn | None) -> None:
    """v2 turns (SHAPESREF.md "v2"; wording of docs/SHAPESREF.md), read independently of the generator."""
    objs = _scene_view(sample)
    if turn.task != "same_as_region" or not turn.targets:
        assert "<loc>" not in turn.assistant and turn.targets == []
    if turn.task == "ground_none":
        m = GROUND_RE.fullmatch(turn.user[0].upper() + turn.user[1:])
        assert m, turn.user
        phrase = m.group(2).removeprefix("the ")
        assert not [o for o in objs if _matches(o, _attrs(phrase))], f"{phrase!r} matches an object"
        assert turn.assistant == f"There is no {phrase}." and not turn.regions and not turn.expect
    elif turn.task in ("ground_all_none", "count_none"):
        noun = _asked_noun(turn)
        assert _group(noun, objs)[0] == [], f"{noun!r} matches an object"
        if turn.task == "ground_all_none":
            assert turn.assistant == f"There are no {noun}." and turn.expect == []
        else:
            assert turn.assistant == f"There are no {noun}: 0 in total" and turn.expect == ["0"]
    elif turn.task == "same_as_region":
        m = re.fullmatch(r"Find all the objects with the same (color|shape) as <region1>\.", turn.user)
        assert m and len(turn.regions) == 1, turn.user
        attr = m.group(1)
        owners = [i for i in range(len(objs)) if _region_is(turn.regions[0], sample, i)]
        assert len(owners) >= 1
        i = owners[0]
        others = sorted((j for j, o in enumerate(objs) if j != i and o[attr] == objs[i][attr]),
                        key=lambda j: objs[j]["pos"])
        assert turn.targets == others
        one = objs[i]["shape"] if attr == "shape" else f"{objs[i]['color']} object"
        want = ", ".join(grounded(f"the {one}") for _ in others) if others else f"There are no other {one}s."
        assert turn.assistant == want and turn.expect == []
    else:  # followup: about the one object the previous turn grounded
        assert prev is not None and prev.task in ("ground_A", "ground_S", "ground_R") and len(prev.targets) == 1
        size, color, shape = sample.labels[prev.targets[0]].split()
        want = {"What color is it?": (color, [color]), "What shape is it?": (shape, [shape]),
                "What size is it?": (size, [size]),
                "Describe it.": (f"a {size} {color} {shape}", [f"{size} {color} {shape}"])}[turn.user]
        assert (turn.assistant, turn.expect) == want and not turn.regions


def check_turns(sample: Sample) -> None:
    """Every turn of a sample, a follow-up with the turn before it."""
    for k, t in enumerate(sample.turns):
        check_turn(sample, t, sample.turns[k - 1] if k else None)


def _region_is(r: Region, sample: Sample, i: int) -> bool:
    if r.kind == "point":
        x, y = r.point
        return bool(sample.masks[i][int(y), int(x)])
    if r.kind == "box":
        return tuple(r.box) == tuple(sample.boxes[i])
    return bool(np.array_equal(r.mask, sample.masks[i]))


# --- the scene -------------------------------------------------------------------------------


def _vertices(o: sr.ShapeObject) -> np.ndarray:
    """Independent polygon of an object (circles: 360 points on the circle)."""
    n, first, r_in = {"circle": (360, 0, 1), "square": (4, 45, 1), "triangle": (3, -90, 1),
                      "hexagon": (6, -90, 1), "star": (10, -90, o.star_ratio)}[o.shape]
    ang = np.deg2rad(first + o.rotation + np.arange(n) * 360.0 / n)
    r = np.where(np.arange(n) % 2 == 1, r_in, 1.0) * o.diameter / 2
    return np.stack([o.center[0] + r * np.cos(ang), o.center[1] + r * np.sin(ang)], -1)


def _near_grey(c) -> bool:
    light = all(170 <= v <= 250 for v in c)
    dark = all(15 <= v <= 75 for v in c)
    return (light or dark) and max(c) - min(c) <= 15


@pytest.mark.parametrize("seed", SEEDS)
def test_scene_follows_spec(seed):
    scene = sr.draw_scene(np.random.default_rng(seed))
    W, H = scene.image.size
    assert scene.image.mode == "RGB"
    assert 192 <= W <= 448 and 192 <= H <= 448
    assert 1 <= len(scene.objects) <= 6
    assert scene.meta["background"]["kind"] in ("solid", "vertical", "horizontal")
    assert all(_near_grey(c) for c in scene.meta["background"]["colors"])
    assert 0 <= scene.meta["noise"] <= 6
    assert scene.meta["jpeg"] is None or scene.meta["jpeg"] >= 75
    for o in scene.objects:
        assert o.shape in SHAPE_WORDS and o.color in BASE and o.size in SIZE_WORDS
        assert o.label == f"{o.size} {o.color} {o.shape}"
        lo, hi = {"small": (0.10, 0.16), "large": (0.22, 0.32)}[o.size]
        assert lo <= o.diameter / min(W, H) <= hi
        assert all(abs(c - b) <= 20 and 0 <= c <= 255 for c, b in zip(o.rgb, BASE[o.color]))
        assert o.rotation == 0 if o.shape == "circle" else -30 <= o.rotation <= 30
        if o.shape == "star":
            assert 0.38 <= o.star_ratio <= 0.50
        v = _vertices(o)
        assert v.min() >= -1e-6 and v[:, 0].max() <= W + 1e-6 and v[:, 1].max() <= H + 1e-6
        assert o.mask.shape == (H, W) and o.mask.dtype == bool and o.mask.any()
        assert tuple(o.box) == box_from_mask(o.mask)
        assert (o.cx, o.cy) == ((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2)
        assert o.mask.sum() >= 0.7 * o.full_area, "more than 30% occluded"
    # visible masks are disjoint, except pixels exactly half covered by each of two objects
    shared = np.stack([o.mask for o in scene.objects]).sum(0) > 1
    if scene.meta["antialias"]:
        assert all(shared[o.mask].sum() <= 0.02 * o.mask.sum() for o in scene.objects)
    else:
        assert not shared.any()


@pytest.mark.parametrize("antialias", [False, True])
def test_masks_match_drawn_pixels(antialias):
    scene = sr.draw_scene(np.random.default_rng(7), n_objects=4, antialias=antialias, noise=0, jpeg=False,
                          background=(30, 30, 30))
    px = np.asarray(scene.image).astype(int)
    for o in scene.objects:
        inner = o.mask
        if antialias:  # pixels whose 4-neighbours are all in the mask are fully covered
            inner = o.mask.copy()
            inner[1:-1, 1:-1] &= o.mask[:-2, 1:-1] & o.mask[2:, 1:-1] & o.mask[1:-1, :-2] & o.mask[1:-1, 2:]
        assert np.all(np.abs(px[inner] - np.array(o.rgb)) <= 1)
    anywhere = np.any([o.mask for o in scene.objects], 0)
    if not antialias:
        assert np.all(px[~anywhere] == 30)


def test_options_and_geometric_masks_under_jpeg():
    a = sr.draw_scene(np.random.default_rng(3), jpeg=False, noise=0, width=200, height=300, background="vertical")
    b = sr.draw_scene(np.random.default_rng(3), jpeg=80, noise=5.0, width=200, height=300, background="vertical")
    assert a.image.size == (200, 300) and b.meta["jpeg"] == 80 and b.meta["noise"] == 5.0
    assert len(a.objects) == len(b.objects)
    for oa, ob in zip(a.objects, b.objects):
        assert np.array_equal(oa.mask, ob.mask) and oa.box == ob.box
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))
    with pytest.raises(ValueError):
        sr.draw_scene(np.random.default_rng(0), background="diagonal")


def test_option_ranges_are_all_sampled():
    metas = [sr.draw_scene(np.random.default_rng(s), n_objects=1).meta for s in range(60)]
    assert {m["background"]["kind"] for m in metas} == {"solid", "vertical", "horizontal"}
    assert {m["antialias"] for m in metas} == {False, True}
    assert any(m["noise"] > 0 for m in metas) and any(m["noise"] == 0 for m in metas)
    assert any(m["jpeg"] for m in metas) and any(m["jpeg"] is None for m in metas)


# --- samples and turns -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_expressions_pick_out_one_object(seed):
    s = sr.make_sample(seed, tasks=["ground_A", "ground_S", "ground_R"], n_requests=6)
    for t in s.turns:
        check_turn(s, t)


def _scene_sample(scene: sr.Scene, turns: list) -> Sample:
    return Sample(image=scene.image, boxes=np.array([o.box for o in scene.objects], np.float32),
                  masks=np.stack([o.mask for o in scene.objects]), labels=[o.label for o in scene.objects],
                  turns=turns)


@pytest.mark.parametrize("task", sr.TASKS)
def test_every_task_gives_valid_turns(task):
    """Each request has the right number of turns (a follow-up two, the rest one), each valid."""
    made = 0
    for seed in range(12):
        scene = sr.draw_scene(np.random.default_rng(seed))
        turns = sr.make_request(scene, np.random.default_rng(seed + 1000), task)
        if turns is None:
            assert task in ("ground_A", "ground_S", "ground_R", "ground_all_none", "count_none")
            continue
        made += 1
        sample = _scene_sample(scene, turns)
        assert len(turns) == (2 if task == "followup" else 1)
        assert turns[-1].task == task
        check_turns(sample)
    assert made >= 3


def test_followup_is_not_a_single_turn():
    scene = sr.draw_scene(np.random.default_rng(0))
    with pytest.raises(ValueError, match="make_request"):
        sr.make_turn(scene, np.random.default_rng(0), "followup")


@pytest.mark.parametrize("kind", ["point", "box", "mask"])
def test_region_kinds(kind):
    scene = sr.draw_scene(np.random.default_rng(5))
    turn = sr.make_turn(scene, np.random.default_rng(0), "region_what", region_kind=kind)
    assert turn.regions[0].kind == kind


def test_ground_all_sorted_left_to_right():
    for seed in range(20):
        s = sr.make_sample(seed, tasks=["ground_all", "count", "same_as_region"], n_requests=2)
        for t in s.turns:
            xs = [(s.boxes[i][0] + s.boxes[i][2]) / 2 for i in t.targets]
            assert xs == sorted(xs)
            check_turn(s, t)


@pytest.mark.parametrize("seed", [0, 1, 17])
def test_determinism(seed):
    a, b = sr.make_sample(seed, n_requests=3), sr.make_sample(seed, n_requests=3)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.masks, b.masks)
    assert a.labels == b.labels
    for ta, tb in zip(a.turns, b.turns):
        assert (ta.user, ta.assistant, ta.targets, ta.task, ta.expect) == (tb.user, tb.assistant, tb.targets,
                                                                           tb.task, tb.expect)
        for ra, rb in zip(ta.regions, tb.regions):
            assert ra.kind == rb.kind and ra.point == rb.point and ra.box == rb.box
            assert (ra.mask is None) == (rb.mask is None)
    c = sr.make_sample(seed + 1)
    assert not (np.asarray(c.image).shape == np.asarray(a.image).shape
                and np.array_equal(np.asarray(c.image), np.asarray(a.image)))


def test_sample_arrays():
    s = sr.make_sample(4, tasks=sr.V1_TASKS, n_requests=4)
    W, H = s.image.size
    K = len(s.labels)
    assert s.boxes.dtype == np.float32 and s.boxes.shape == (K, 4)
    assert s.masks.dtype == bool and s.masks.shape == (K, H, W)
    assert s.meta["seed"] == 4 and len(s.turns) == 4
    f = sr.make_sample(4, tasks=["followup", "ground_none"], weights=[1, 0], n_requests=3)
    assert [t.task for t in f.turns][1::2] == ["followup"] * 3 and len(f.turns) == 6


@pytest.mark.parametrize("bad", [dict(tasks=["nope"]), dict(tasks=[]), dict(tasks=["count"], weights=[1, 2]),
                                 dict(tasks=["count", "ground_A"], weights=[0, 0])])
def test_make_sample_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        sr.make_sample(0, **bad)


def test_weights_select_tasks():
    s = sr.make_sample(3, tasks=["count", "region_color"], weights=[0, 1], n_requests=5)
    assert {t.task for t in s.turns} == {"region_color"}


def test_write_dataset_round_trip(tmp_path):
    path = sr.write_dataset(tmp_path, seed=100, count=3, n_requests=3)
    assert path == tmp_path / "data.jsonl" and len(list((tmp_path / "images").glob("*.png"))) == 3
    back = list(read_jsonl(path))
    assert len(back) == 3
    for i, r in enumerate(back):
        s = sr.make_sample(100 + i, n_requests=3)
        assert np.array_equal(np.asarray(r.image), np.asarray(s.image))
        assert np.array_equal(r.masks, s.masks) and np.array_equal(r.boxes, s.boxes)
        assert r.labels == s.labels
        for tr, ts in zip(r.turns, s.turns):
            assert (tr.user, tr.assistant, tr.targets, tr.task, tr.expect) == (ts.user, ts.assistant, ts.targets,
                                                                               ts.task, ts.expect)
            for a, b in zip(tr.regions, ts.regions):
                assert a.kind == b.kind
                if a.kind == "mask":
                    assert np.array_equal(a.mask, b.mask)
                else:
                    assert tuple(a.point or a.box) == tuple(b.point or b.box)
        check_turns(r)


def test_speed_is_reasonable():
    import time

    t = time.perf_counter()
    for seed in range(20):
        sr.make_sample(seed)
    per = (time.perf_counter() - t) / 20
    assert per < 0.1, f"{per * 1e3:.1f} ms per sample"


def test_constants():
    assert sr.COLORS == BASE and sr.SHAPES == ["circle", "square", "triangle", "star", "hexagon"]
    assert len(sr.V1_TASKS) == 10 and sr.TASKS == sr.V1_TASKS + sr.V2_TASKS and math.isclose(sr.MARGIN, 0.05)
    assert sr.V2_TASKS == ["ground_none", "ground_all_none", "count_none", "followup", "same_as_region"]


def test_data_config_defaults_cover_every_task():
    from perception.config import DataConfig

    d = DataConfig()
    assert d.tasks == sr.TASKS and len(d.weights) == len(d.tasks) and math.isclose(sum(d.weights), 1.0)


def test_listings_name_only_what_was_asked():
    """"All", counting and same-as-a-region answers name every listed object by the question's
    noun ("the circle", "the red object"), left to right."""
    seen = 0
    for seed in range(40):
        t = sr.make_sample(seed, tasks=["ground_all", "count", "same_as_region"]).turns[0]
        phrases = re.findall(r"<p>(.+?)</p><loc>", t.assistant)
        assert len(phrases) == len(t.targets) and len(set(phrases)) <= 1, t.assistant
        if t.task != "same_as_region":  # its nouns: check_v2_turn
            m = re.search(r"all the (.+?)s?[?.]?$|How many (.+?)s? are there", t.user)
            one = (m.group(1) or m.group(2)).removesuffix(" object")
            assert all(p in (f"the {one}", f"the {one} object") for p in phrases), (t.user, t.assistant)
        seen += len(phrases) > 1
    assert seen, "some questions list several objects"


# --- v2 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["ground_none", "ground_all_none", "count_none"])
def test_no_target_phrases_match_no_object(task):
    """Over many scenes (1..6 objects) every no-target request names something absent (checked
    by check_v2_turn's own reading of the phrase) and its answer says so without a <loc>."""
    from perception.metrics import says_none

    made = 0
    for seed in range(60):
        s = sr.make_sample(seed, tasks=[task], n_requests=2)
        for t in s.turns:
            if t.task == task:  # an impossible one falls back to ground_A
                made += 1
                check_v2_turn(s, t, None)
                assert says_none(t.assistant, counting=task == "count_none")
    assert made >= 60


def test_same_as_region_targets_are_the_other_objects_sharing_the_attribute():
    from perception.data.shapesref_v2 import same_as_region

    kinds, none, some = set(), 0, 0
    for seed in range(60):
        scene = sr.draw_scene(np.random.default_rng(seed))
        for attr in ("color", "shape"):
            t = same_as_region(scene, np.random.default_rng(seed), attribute=attr)
            (r,) = t.regions
            kinds.add(r.kind)
            s = _scene_sample(scene, [t])
            check_v2_turn(s, t, None)
            owner = [i for i, o in enumerate(scene.objects) if _region_is(r, s, i)][0]
            assert owner not in t.targets
            none += not t.targets
            some += len(t.targets) >= 2
    assert kinds == {"point", "box", "mask"} and none and some


def test_same_as_region_target_rate_chooses_whether_a_target_exists():
    """Training's target_rate: 1.0 gives a target wherever the scene has one to give, 0.0 none
    wherever the scene has a request without one; the turns stay valid; out of range is refused."""
    from perception.data.shapesref_v2 import SAME_ATTRIBUTES, same_as_region, same_as_region_targets

    both = 0
    for seed in range(60):
        scene = sr.draw_scene(np.random.default_rng(seed))
        objs = scene.objects
        kinds = {bool(same_as_region_targets(objs, j, a)) for a in SAME_ATTRIBUTES for j in range(len(objs))}
        for rate, want in ((1.0, True), (0.0, False)):
            t = same_as_region(scene, np.random.default_rng(seed), target_rate=rate)
            check_v2_turn(_scene_sample(scene, [t]), t, None)
            assert bool(t.targets) == (want if kinds == {True, False} else True in kinds)
        both += kinds == {True, False}
    assert both >= 20
    with pytest.raises(ValueError, match="target_rate"):
        same_as_region(sr.draw_scene(np.random.default_rng(0)), np.random.default_rng(0), target_rate=1.5)


def test_same_target_none_is_the_contracts_draw_and_reaches_the_stream():
    """make_sample(same_target=None) is the default sample, seed for seed (evaluation scenes do
    not move); DataConfig.same_target reaches the training stream's samples."""
    from perception.config import DataConfig
    from perception.data.streams import ShapesRefStream

    def key(s):
        return [(t.user, t.assistant, t.targets) for t in s.turns]

    for seed in range(20):
        assert key(sr.make_sample(seed, same_target=None)) == key(sr.make_sample(seed))
    cfg = DataConfig(tasks=["same_as_region"], weights=[1.0], multi_turn=0.0, same_target=1.0)
    stream = iter(ShapesRefStream(cfg, seed=3))
    turns = [next(stream).turns[0] for _ in range(40)]
    contract = iter(ShapesRefStream(DataConfig(tasks=["same_as_region"], weights=[1.0], multi_turn=0.0), seed=3))
    plain = [next(contract).turns[0] for _ in range(40)]
    assert sum(bool(t.targets) for t in turns) > sum(bool(t.targets) for t in plain)


@pytest.mark.parametrize("question", ["color", "shape", "size", "describe"])
def test_followup_expected_words(question):
    from perception.data.shapesref_v2 import make_followup

    firsts = set()
    for seed in range(12):
        scene = sr.draw_scene(np.random.default_rng(seed))
        turns = make_followup(scene, np.random.default_rng(seed), question=question)
        if turns is None:
            continue
        first, second = turns
        o = scene.objects[first.targets[0]]
        want = {"color": [o.color], "shape": [o.shape], "size": [o.size], "describe": [o.label]}[question]
        assert second.expect == want and second.task == "followup" and first.assistant.count("<loc>") == 1
        firsts.add(first.task)
        check_turns(_scene_sample(scene, turns))
    assert firsts >= {"ground_A", "ground_R"}


def test_v2_samples_are_valid_and_deterministic():
    for seed in range(30):
        s = sr.make_sample(seed, tasks=sr.V2_TASKS, n_requests=2)
        assert 2 <= len(s.turns) <= 4
        check_turns(s)
        again = sr.make_sample(seed, tasks=sr.V2_TASKS, n_requests=2)
        assert [(t.user, t.assistant, t.targets) for t in s.turns] == [(t.user, t.assistant, t.targets) for t in again.turns]


# v1 samples pinned at the branch point (commit 05db733, list_phrase="noun", the form that ships):
# sha256 over image bytes, masks, boxes and every turn, by the helper below.
V1_PINS = {
    ("default", 0): "e2d27a53c94c1f1f", ("stage3", 0): "0bb910ee477b6456",
    ("default", 7): "29a2be29a1ca57ea", ("stage3", 7): "f3dbb92da053d180",
    ("default", 123): "9436d6b4d592ce14", ("stage3", 123): "5247c54df1068a2d",
    ("default", 10_000_000): "d147c21f5a41edda", ("stage3", 10_000_000): "f6feb41f0967a3a2",
}
STAGE3_WEIGHTS = [0.08, 0.20, 0.16, 0.16, 0.12, 0.04, 0.04, 0.02, 0.06, 0.12]


def _digest(s: Sample) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(np.asarray(s.image).tobytes())
    h.update(s.masks.tobytes())
    h.update(s.boxes.tobytes())
    for t in s.turns:
        h.update(repr((t.user, t.assistant, t.targets, t.task, t.expect)).encode())
        for r in t.regions:
            h.update(repr((r.kind, r.point, r.box)).encode())
            if r.mask is not None:
                h.update(r.mask.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("mix,seed", sorted(V1_PINS))
def test_v1_samples_are_unchanged(mix, seed):
    """With the v1 task list, v2 changes nothing: same scenes, requests and answers, seed for seed."""
    if mix == "default":
        s = sr.make_sample(seed, tasks=sr.V1_TASKS, n_requests=3)
    else:
        s = sr.make_sample(seed, tasks=sr.V1_TASKS, weights=STAGE3_WEIGHTS, n_requests=2)
    assert _digest(s) == V1_PINS[(mix, seed)]


def test_v1_evaluation_items_are_unchanged():
    """The evaluator's v1 requests (what the shipped model's v1 numbers come from) are those of
    the branch point, whether or not v2 requests are asked too."""
    import hashlib

    from perception.evaluate import shapesref_items

    def digest(items):
        h = hashlib.sha256()
        for i, gt, t in items:
            if isinstance(t, dict):
                h.update(repr((i, t["point"], t["target"])).encode())
            elif isinstance(t, Turn) and t.task in sr.V1_TASKS:
                h.update(repr((i, t.user, t.targets, t.task, t.expect, [r.kind for r in t.regions],
                               [r.point for r in t.regions], [r.box for r in t.regions])).encode())
        return h.hexdigest()[:16]

    assert digest(shapesref_items(10_000_000, 12)) == "05863c66bb06486e"
    assert digest(shapesref_items(10_000_000, 12, v2_count=12)) == "05863c66bb06486e"


def test_v2_samples_train(tiny_model, tiny_tokenizer):
    """v2 conversations (answers with no <loc>, a follow-up's two turns) collate into a batch the
    model takes a finite loss on, like v1 samples."""
    import torch

    from perception.data.collate import Collator

    col = Collator(tiny_model.config, tiny_tokenizer, tiny_model.backbone.num_image_tokens)
    samples = [sr.make_sample(s, tasks=sr.V2_TASKS, n_requests=2) for s in (1, 2, 3)]
    assert {t.task for s in samples for t in s.turns} >= {"followup"}
    out = tiny_model(col(samples))
    assert torch.isfinite(out["loss"])


def test_same_target_share_bench_reads_the_option(capsys):
    """bench/same_target_share.py: a higher same_target gives more requests with a target."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "same_target_share", Path(__file__).resolve().parent.parent / "bench" / "same_target_share.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.target_share(None, 40) < mod.target_share(1.0, 40) <= 1.0
    mod.main(["--count", "5", "--rates", "none", "0"])
    assert capsys.readouterr().out.count("requests have a target") == 2
