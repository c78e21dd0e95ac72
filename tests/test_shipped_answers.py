"""The shipped tiny model's answers on fixed scenes, pinned: text, boxes and masks.

A refactor of the decoding path must not change what the shipped model says or draws. The
expected answers in tests/data/shipped_answers.json were first recorded before the clean-up that
decodes each ``<loc>`` once (commit eaf7435); re-recorded after it, one mask changed: case 22's
second object (2,873 -> 2,742 pixels, same text and first object), because the mask fed back
after the first ``<loc>`` is now the reported one rather than a second, model-frame decoding.
Re-recorded whenever a new model is shipped (last: the model with relation and position scores,
docs/RESULTS.md). Record with

    python tests/test_shipped_answers.py --write

Scenes are ShapesRef images drawn from fixed seeds; the requests (message, regions, one follow-up
turn that replays the first answer's history) are stored in the JSON, so the test does not depend
on the request generator. Masks are compared by area and a hash of their packed bits, boxes to
1e-3 pixel.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "shipped_answers.json"
SEED = 40_000_000


def _scene(i: int):
    from perception.data.shapesref import draw_scene

    return draw_scene(np.random.default_rng(SEED + i))


def _requests() -> list:
    """(scene index, message, regions as JSON dicts, follow-up message or None) for each case."""
    from perception.data.shapesref import make_turn
    from perception.maskformat import region_to_json

    tasks = ["ground_A", "ground_S", "ground_R", "ground_all", "count", "region_what", "region_color",
             "region_shape", "click_seg"]
    out = []
    for i in range(27):
        scene = _scene(i)
        rng = np.random.default_rng(SEED + 1000 + i)
        turn = make_turn(scene, rng, tasks[i % len(tasks)], region_kind=("point", "box", "mask")[i % 3]) or make_turn(scene, rng, "ground_A")
        follow = "What color is <region1>?" if i % 5 == 0 else None
        out.append({"scene": i, "message": turn.user, "regions": [region_to_json(r) for r in turn.regions],
                    "follow_up": follow})
    return out


def _mask_key(mask) -> list:
    if mask is None:
        return [0, ""]
    return [int(mask.sum()), hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()[:16]]


def _answer_record(ans) -> dict:
    return {"text": ans.text, "raw": ans.raw,
            "objects": [{"box": [round(float(v), 3) for v in o.box], "mask": _mask_key(o.mask), "phrase": o.phrase}
                        for o in ans.objects]}


def _run(pipe, case) -> list:
    from perception.maskformat import region_from_json

    image = _scene(case["scene"]).image
    regions = [region_from_json(r) for r in case["regions"]]
    ans = pipe.chat(image, case["message"], regions=regions)
    recs = [_answer_record(ans)]
    if case["follow_up"] and ans.objects and ans.objects[0].mask is not None:
        import perception

        region = perception.Region(mask=ans.objects[0].mask)
        recs.append(_answer_record(pipe.chat(image, case["follow_up"], history=ans.history, regions=[region])))
    return recs


@pytest.fixture(scope="module")
def pipe():
    import perception

    return perception.load_pipeline("tiny", device="cpu")


def _cases():
    return json.loads(DATA.read_text())["cases"]


@pytest.mark.parametrize("k", range(27))
def test_shipped_model_answers_as_recorded(pipe, k):
    case = _cases()[k]
    got = _run(pipe, case)
    assert got == case["answers"], f"case {k} ({case['message']!r}) changed"


def _write():
    import perception

    pipe = perception.load_pipeline("tiny", device="cpu")
    cases = []
    for case in _requests():
        case["answers"] = _run(pipe, case)
        cases.append(case)
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps({"command": "python tests/test_shipped_answers.py --write", "cases": cases}, indent=1))
    print(f"wrote {len(cases)} cases to {DATA}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if "--write" in sys.argv:
        _write()
