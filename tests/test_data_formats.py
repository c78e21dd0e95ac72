"""The native JSONL format, its RLE helpers, and the RefCOCO-family loader (on a fixture built here)."""

from __future__ import annotations

import collections
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from perception.data.jsonl import JsonlDataset, read_jsonl, write_jsonl
from perception.maskformat import excerpt, region_from_json, region_to_json, rle_decode, rle_encode
from perception.data.refcoco import RefCocoDataset, load_refcoco, load_refs
from perception.data.sample import Sample, Turn
from perception.tokens import grounded
from perception.types import Region


def _uncompressed(mask: np.ndarray) -> list:
    """Column-major run lengths, starting with a run of zeros (COCO's uncompressed RLE)."""
    flat = mask.T.ravel().astype(np.int8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    return runs


# --- RLE -------------------------------------------------------------------------------------

MASKS = {
    "random": np.random.default_rng(0).random((17, 23)) > 0.5,
    "empty": np.zeros((5, 7), bool),
    "full": np.ones((6, 4), bool),
    "blob": np.pad(np.ones((3, 4), bool), ((2, 5), (1, 6))),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_rle_round_trip(name):
    m = MASKS[name]
    rle = rle_encode(m)
    assert rle["size"] == list(m.shape) and isinstance(rle["counts"], str)
    json.dumps(rle)
    assert np.array_equal(rle_decode(rle), m)
    assert np.array_equal(rle_decode({"size": rle["size"], "counts": rle["counts"].encode()}), m)
    assert np.array_equal(rle_decode({"size": list(m.shape), "counts": _uncompressed(m)}), m)


@pytest.mark.parametrize("bad", [{}, {"size": [2, 2]}, {"size": [2, 2], "counts": 3}, {"size": [2, 2], "counts": [1, 2]}])
def test_rle_decode_rejects_garbage(bad):
    with pytest.raises(ValueError):
        rle_decode(bad)


# --- regions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("region", [
    Region(point=(3, 4)), Region(point=(2.5, 7.25)), Region(box=(1, 2, 9, 8)), Region(mask=MASKS["blob"]),
])
def test_region_json_round_trip(region):
    d = json.loads(json.dumps(region_to_json(region)))
    back = region_from_json(d, size=MASKS["blob"].shape)
    assert back.kind == region.kind
    if region.kind == "mask":
        assert np.array_equal(back.mask, region.mask)
    else:
        assert tuple(back.point or back.box) == tuple(region.point or region.box)


@pytest.mark.parametrize("bad", [{}, {"point": [1, 2], "box": [0, 0, 1, 1]}, {"box": [3, 3, 1, 1]},
                                 {"mask": rle_encode(np.zeros((4, 4), bool))}])
def test_region_from_json_errors(bad):
    with pytest.raises(ValueError):
        region_from_json(bad, size=(10, 12))


def _nested(depth: int) -> list:
    """[[[...[]...]]] nested ``depth`` levels, built without recursion."""
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("bad, words", [
    (_nested(5000), "exactly one of 'point', 'box' or 'mask'; got [[[[...]]]]"),
    ({"point": _nested(5000)}, "point must be a list of 2 numbers; got [[[[...]]]]"),
    ({"box": [1, 2, _nested(5000), 4]}, "box must be a list of 4 numbers"),
    ({"mask": {"size": _nested(5000), "counts": "ab"}}, "not a COCO RLE"),
    ({"mask": {"size": [2, 2], "counts": [_nested(5000)]}}, "counts must be integers"),
])
def test_nested_input_gets_a_short_clear_error(bad, words):
    """Error messages quote a depth-limited excerpt: str() of 5,000 nested lists raises RecursionError."""
    with pytest.raises(ValueError) as e:
        region_from_json(bad, size=(2, 2) if "mask" in bad else None)
    assert words in str(e.value) and len(str(e.value)) < 200


def test_excerpt_is_short_and_depth_limited():
    assert excerpt(_nested(5000)) == "[[[[...]]]]"
    assert len(excerpt("x" * 10_000)) <= 45 and len(excerpt(list(range(10_000)))) < 40


# --- JSONL -----------------------------------------------------------------------------------


def _sample(seed=0, W=24, H=16) -> Sample:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    m0 = np.zeros((H, W), bool)
    m0[2:7, 3:10] = True
    m1 = np.zeros((H, W), bool)
    m1[9:15, 12:20] = True
    turns = [
        Turn(user="Find the red square.", assistant=grounded("the red square"), targets=[0], task="ground_A"),
        Turn(user="What is <region1>?", assistant="a blob", regions=[Region(mask=m1)], task="region_what",
             expect=["blob"]),
        Turn(user="Segment <region1>.", assistant=grounded("the thing"), regions=[Region(point=(14, 10))],
             targets=[1], task="click_seg"),
    ]
    return Sample(image=img, boxes=np.array([[3, 2, 10, 7], [12, 9, 20, 15]], np.float32),
                  masks=np.stack([m0, m1]), labels=["a", "b"], turns=turns, meta={"k": 1})


def _same(a: Sample, b: Sample):
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.masks, b.masks) and a.labels == b.labels
    for ta, tb in zip(a.turns, b.turns, strict=True):
        assert (ta.user, ta.assistant, ta.targets, ta.task, ta.expect) == (tb.user, tb.assistant, tb.targets,
                                                                           tb.task, tb.expect)
        for ra, rb in zip(ta.regions, tb.regions, strict=True):
            assert ra.kind == rb.kind
            assert np.array_equal(ra.mask, rb.mask) if ra.kind == "mask" else ra.point == rb.point and ra.box == rb.box


def test_jsonl_round_trip_and_dataset(tmp_path):
    samples = [_sample(0), _sample(1, W=30, H=12)]
    path = write_jsonl(samples, tmp_path)
    assert path.name == "data.jsonl"
    back = list(read_jsonl(path))
    for a, b in zip(samples, back, strict=True):
        _same(a, b)
    ds = JsonlDataset(path)
    assert len(ds) == 2
    _same(ds[1], samples[1])
    _same(ds[-2], samples[0])
    with pytest.raises(IndexError):
        ds[2]


def test_mask_png_absolute_image_and_missing_box(tmp_path):
    s = _sample()
    s.image.save(tmp_path / "img.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(s.masks[1].astype(np.uint8) * 255).save(tmp_path / "masks" / "m1.png")
    rec = {"image": str(tmp_path / "img.png"), "width": 24, "height": 16,
           "objects": [{"mask": rle_encode(s.masks[0]), "label": "a"}, {"mask_png": "masks/m1.png", "box": [12, 9, 20, 15]}],
           "turns": [{"user": "Find it.", "assistant": grounded("it"), "targets": [1]}]}
    (tmp_path / "x.jsonl").write_text("\n" + json.dumps(rec) + "\n\n")
    (got,) = list(read_jsonl(tmp_path / "x.jsonl"))
    assert np.array_equal(got.masks, s.masks)
    assert got.boxes.tolist() == [[3, 2, 10, 7], [12, 9, 20, 15]]
    assert got.labels == ["a", ""] and got.turns[0].targets == [1]
    assert len(JsonlDataset(tmp_path / "x.jsonl")) == 1


def _bad_lines(tmp_path) -> dict:
    s = _sample()
    write_jsonl([s], tmp_path)
    good = json.loads((tmp_path / "data.jsonl").read_text())
    out = {"invalid JSON": "{not json"}
    for name, edit in {
        "image file not found": lambda d: d.update(image="images/nope.png"),
        "out of range": lambda d: d["turns"][0].update(targets=[5]),
        "<loc> tokens": lambda d: d["turns"][0].update(targets=[0, 1]),
        "needs 'mask'": lambda d: d["objects"][0].pop("mask"),
        "mask is": lambda d: d["objects"][0].update(mask=rle_encode(np.zeros((3, 3), bool))),
        "malformed": lambda d: d["turns"][0].pop("user"),
        "but image": lambda d: d.update(width=99),
    }.items():
        d = json.loads(json.dumps(good))
        edit(d)
        out[name] = json.dumps(d)
    return {k: json.dumps(good) + "\n" + v + "\n" for k, v in out.items()}


def test_bad_jsonl_names_file_and_line(tmp_path):
    for expect, text in _bad_lines(tmp_path).items():
        p = tmp_path / "bad.jsonl"
        p.write_text(text)
        with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{expect}"):
            list(read_jsonl(p))
        ds = JsonlDataset(p)
        ds[0]
        with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
            ds[1]
    with pytest.raises(ValueError, match="not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


# --- RefCOCO ---------------------------------------------------------------------------------


def _refcoco_fixture(root):
    """Two tiny COCO images, instances.json (polygon + RLE segmentations) and refs(unc).p."""
    folder = root / "refcoco"
    imgs = root / "images" / "mscoco" / "images" / "train2014"
    folder.mkdir(parents=True)
    imgs.mkdir(parents=True)
    sizes = {1: (40, 30), 2: (32, 24)}  # image id -> (W, H)
    for i, (w, h) in sizes.items():
        Image.new("RGB", (w, h), (i * 50, 0, 0)).save(imgs / f"COCO_train2014_{i:012d}.jpg")
    rle_mask = np.zeros((24, 32), bool)
    rle_mask[4:10, 5:20] = True
    inst = {
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": w, "height": h}
                   for i, (w, h) in sizes.items()],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 6, 10, 8], "iscrowd": 0,
             "segmentation": [[4, 6, 14, 6, 14, 14, 4, 14]]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [20, 2, 12, 20], "iscrowd": 0,
             "segmentation": [[20, 2, 32, 2, 32, 22, 20, 22]]},
            {"id": 20, "image_id": 2, "category_id": 1, "bbox": [5, 4, 15, 6], "iscrowd": 1,
             "segmentation": {"size": [24, 32], "counts": _uncompressed(rle_mask)}},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    (folder / "instances.json").write_text(json.dumps(inst))
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train", "category_id": 1,
         "file_name": "COCO_train2014_000000000001_10.jpg",
         "sentences": [{"sent": "left cat", "raw": "Left cat."}, {"sent": "small thing", "raw": "small thing"}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "testA", "category_id": 2,
         "file_name": "COCO_train2014_000000000001_11.jpg", "sentences": [{"sent": "dog on right", "raw": "x"}]},
        {"ref_id": 2, "ann_id": 20, "image_id": 2, "split": "train", "category_id": 1,
         "file_name": "COCO_train2014_000000000002_20.jpg", "sentences": [{"sent": "the cat .", "raw": "x"}]},
    ]
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return rle_mask


def test_refcoco_loader(tmp_path):
    rle_mask = _refcoco_fixture(tmp_path)
    ds = load_refcoco(tmp_path, "refcoco", "train")
    assert isinstance(ds, RefCocoDataset) and len(ds) == 3  # one item per sentence
    s = ds[0]
    assert s.image.size == (40, 30)
    assert s.boxes.tolist() == [[4, 6, 14, 14]] and s.labels == ["cat"]
    assert s.masks.shape == (1, 30, 40) and s.masks[0, 7:13, 5:13].all() and not s.masks[0, :, 20:].any()
    (t,) = s.turns
    assert (t.user, t.assistant, t.targets) == ("Find left cat.", grounded("left cat"), [0])
    assert ds[1].turns[0].user == "Find small thing."
    last = ds[2]
    assert np.array_equal(last.masks[0], rle_mask) and last.boxes.tolist() == [[5, 4, 20, 10]]
    assert last.turns[0].user == "Find the cat."
    test_a = RefCocoDataset(tmp_path / "refcoco", "refcoco", "testA",
                            image_dir=tmp_path / "images" / "mscoco" / "images" / "train2014")
    assert len(test_a) == 1 and test_a[0].labels == ["dog"]
    per_ref = RefCocoDataset(tmp_path, "refcoco", "train", per_ref=True)
    assert len(per_ref) == 2 and len(per_ref[0].turns) == 2


def test_refcoco_errors(tmp_path):
    _refcoco_fixture(tmp_path)
    with pytest.raises(ValueError, match="splits"):
        load_refcoco(tmp_path, "refcoco", "testB")
    with pytest.raises(ValueError, match="refs"):
        load_refcoco(tmp_path, "refcoco", "train", split_by="google")
    with pytest.raises(ValueError, match="dataset"):
        load_refcoco(tmp_path, "coco", "train")
    with pytest.raises(ValueError, match="image not found"):
        RefCocoDataset(tmp_path, "refcoco", "train", image_dir=tmp_path / "elsewhere")[0]


@pytest.mark.parametrize("payload", [collections.OrderedDict(a=1), [{"x": np.int64(3)}], pickle.loads])
def test_refs_pickle_allows_plain_data_only(tmp_path, payload):
    p = tmp_path / "refs(unc).p"
    p.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="refuses to load"):
        load_refs(p)
    p.write_bytes(pickle.dumps([{"ref_id": 1, "sentences": [{"sent": "é"}], "f": 1.5, "t": (1, 2)}]))
    assert load_refs(p)[0]["sentences"][0]["sent"] == "é"
