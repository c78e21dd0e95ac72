"""ShapesRef v2 requests (SHAPESREF.md, "v2: requests a chat must also handle").

- No target: a one-object request with an A-type expression, an "all the ..." request or a
  counting question whose attributes match no object in the scene.
- Follow-up about "it": a one-object grounding request (A, S or R), then a question about the
  object it grounded.
- Same as a region: "Find all the objects with the same {color|shape} as <region1>."; the targets
  are the *other* objects sharing that attribute, in listing order (left to right).

Answer wording (docs/SHAPESREF.md records it; a no-target answer has no ``<loc>`` and no target):

======================  ===================================================================
ground_none             "There is no {A phrase}."              "There is no purple star."
ground_all_none         "There are no {noun}."                 "There are no circles."
count_none              "There are no {noun}: 0 in total"      (the v1 form "{listing}: {n} in total")
same_as_region, none    "There are no other {noun}."           "There are no other red objects."
same_as_region          "{listing}", each object "the {one}"   "<p>the circle</p><loc>, ..."
followup (turn 2)       colour / shape / size word; "a {size} {color} {shape}" for "Describe it."
======================  ===================================================================

Frames: pixels of the scene image (x = column, y = row), as in perception.data.shapesref.
"""

from __future__ import annotations

import itertools

import numpy as np

from perception.data import shapesref as sr
from perception.data.sample import Turn
from perception.tokens import grounded

GROUND_TASKS = ("ground_A", "ground_S", "ground_R")
SAME_ATTRIBUTES = ("color", "shape")
# follow-up question kind -> (question, answer of object o, expected words of o)
FOLLOWUPS = {
    "color": ("What color is it?", lambda o: o.color, lambda o: [o.color]),
    "shape": ("What shape is it?", lambda o: o.shape, lambda o: [o.shape]),
    "size": ("What size is it?", lambda o: o.size, lambda o: [o.size]),
    "describe": ("Describe it.", lambda o: f"a {o.label}", lambda o: [o.label]),
}
FOLLOWUP_QUESTIONS = tuple(FOLLOWUPS)


def _all_keys(kind: str) -> list:
    """Every attribute key an A-type phrase of ``kind`` can name, whatever the scene."""
    values = {"size": list(sr.SIZES), "color": list(sr.COLORS), "shape": sr.SHAPES, "object": ["object"]}
    return list(itertools.product(*(values[w] for w in kind.split())))


def absent_keys(objs: list, kind: str) -> list:
    """Attribute keys of ``kind`` (one of shapesref.A_KINDS) that no object in ``objs`` has."""
    present = {sr.attribute_key(o, kind) for o in objs}
    return [k for k in _all_keys(kind) if k not in present]


def no_target_expression(rng: np.random.Generator, objs: list) -> str:
    """An A-type expression ("the purple star") that matches no object: a template uniform among
    those with an absent key, then a key uniform among that template's absent ones."""
    options = {kind: absent_keys(objs, kind) for kind in sr.A_KINDS}
    kinds = [k for k in sr.A_KINDS if options[k]]  # "color shape" always has one: 30 keys, <= 6 objects
    keys = options[sr._choice(rng, kinds)]
    return "the " + " ".join(sr._choice(rng, keys))


def _absent_group(rng: np.random.Generator, objs: list):
    """A "shape" or "color object" key no object has (uniform over the kinds that have one), or None."""
    options = {kind: absent_keys(objs, kind) for kind in ("shape", "color object")}
    kinds = [k for k in options if options[k]]
    if not kinds:
        return None
    return sr._choice(rng, options[sr._choice(rng, kinds)])


def make_v2_turn(scene: sr.Scene, rng: np.random.Generator, task: str, region_kind: str | None = None,
                 same_target: float | None = None) -> Turn | None:
    """One turn of the one-turn v2 ``task`` (ground_none, ground_all_none, count_none,
    same_as_region); None when it is impossible in this scene (every shape, or colour, present)."""
    objs = scene.objects
    if task == "ground_none":
        expr = no_target_expression(rng, objs)
        return Turn(user=sr._ground_request(rng, expr), assistant=f"There is no {expr.removeprefix('the ')}.",
                    task=task)
    if task in ("ground_all_none", "count_none"):
        key = _absent_group(rng, objs)
        if key is None:
            return None
        noun, _ = sr.group_nouns(key)
        if task == "ground_all_none":
            user = f"{sr._choice(rng, sr.ALL_VERBS)} all the {noun}{sr._punct(rng)}"
            return Turn(user=user, assistant=f"There are no {noun}.", task=task)
        return Turn(user=f"How many {noun} are there?", assistant=f"There are no {noun}: 0 in total", task=task,
                    expect=["0"])
    if task == "same_as_region":
        return same_as_region(scene, rng, region_kind=region_kind, target_rate=same_target)
    raise ValueError(f"unknown one-turn v2 task {task!r}; expected one of {sr.NO_TARGET_TASKS + ['same_as_region']}")


def same_as_region_targets(objs: list, i: int, attribute: str) -> list:
    """Indices of the objects other than ``i`` with the same ``attribute`` ("color" | "shape"),
    in listing order (left to right)."""
    if attribute not in SAME_ATTRIBUTES:
        raise ValueError(f"attribute must be one of {SAME_ATTRIBUTES}; got {attribute!r}")
    want = getattr(objs[i], attribute)
    return sr._sorted_matches(objs, [j for j, o in enumerate(objs) if j != i and getattr(o, attribute) == want])


def same_as_region(scene: sr.Scene, rng: np.random.Generator, attribute: str | None = None,
                   region_kind: str | None = None, target_rate: float | None = None) -> Turn:
    """"Find all the objects with the same {attribute} as <region1>." about a random object.

    attribute: "color" | "shape"; region_kind: "point" | "box" | "mask" (each uniform when None).
    The region is drawn as for region questions; the answer lists the other objects sharing the
    attribute by its noun ("the circle", "the red object"), or says there are none.
    target_rate (training only; None: the contract's draw, the region's object uniform): the
    probability that the request has a target where the scene allows both (the attribute and the
    region's object uniform among the pairs that have a target, else among those that have none).
    """
    objs = scene.objects
    if target_rate is None:
        attribute = attribute or sr._choice(rng, SAME_ATTRIBUTES)
        i = int(rng.integers(len(objs)))
    else:
        if not 0.0 <= target_rate <= 1.0:
            raise ValueError(f"target_rate must be in [0, 1]; got {target_rate}")
        pairs = [(a, j) for a in ([attribute] if attribute else SAME_ATTRIBUTES) for j in range(len(objs))]
        found = [p for p in pairs if same_as_region_targets(objs, p[1], p[0])]
        none = [p for p in pairs if p not in found]
        pool = (found if rng.random() < target_rate else none) if found and none else pairs
        attribute, i = pool[int(rng.integers(len(pool)))]
    region = sr._region(rng, objs[i], region_kind or sr._choice(rng, sr.REGION_KINDS))
    targets = same_as_region_targets(objs, i, attribute)
    key = (objs[i].shape,) if attribute == "shape" else (objs[i].color, "object")
    noun, one = sr.group_nouns(key)
    answer = ", ".join(grounded(f"the {one}") for _ in targets) if targets else f"There are no other {noun}."
    user = f"Find all the objects with the same {attribute} as <region1>."
    return Turn(user=user, assistant=answer, regions=[region], targets=targets, task="same_as_region")


def make_followup(scene: sr.Scene, rng: np.random.Generator, ground_task: str | None = None,
                  question: str | None = None) -> list | None:
    """Two turns: a one-object grounding request (``ground_task``, one of GROUND_TASKS, uniform when
    None; an impossible one falls back to the next), then ``question`` (one of FOLLOWUP_QUESTIONS,
    uniform when None) about the object turn 1 grounded. Turn 2's ``expect`` holds that object's
    words. None when no one-object expression exists in the scene."""
    start = GROUND_TASKS.index(ground_task) if ground_task else int(rng.integers(len(GROUND_TASKS)))
    first = None
    for k in range(len(GROUND_TASKS)):
        first = sr.make_turn(scene, rng, GROUND_TASKS[(start + k) % len(GROUND_TASKS)])
        if first is not None:
            break
    if first is None:
        return None
    question = question or sr._choice(rng, FOLLOWUP_QUESTIONS)
    if question not in FOLLOWUPS:
        raise ValueError(f"question must be one of {FOLLOWUP_QUESTIONS}; got {question!r}")
    user, answer, expect = FOLLOWUPS[question]
    o = scene.objects[first.targets[0]]
    return [first, Turn(user=user, assistant=answer(o), task="followup", expect=expect(o))]
