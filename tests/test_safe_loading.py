"""Safe loading: safetensors only, clear CheckpointErrors naming the file, atomic saves.

A tiny PerceptionModel is saved once per module; each test damages a copy of that folder.
"""

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import perception.checkpoint as ckpt
from perception.checkpoint import INDEX_NAME, CheckpointError, from_pretrained, save_pretrained


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    return save_pretrained(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def folder(saved, tmp_path):
    """A fresh copy of the saved checkpoint to damage."""
    return shutil.copytree(saved, tmp_path / "tiny")


def shards(folder):
    return sorted(folder.glob("model-*.safetensors"))


def test_round_trip(folder, tiny_model):
    back = from_pretrained(folder)
    for name, t in tiny_model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt*"))  # safetensors only


def test_truncated_shard_names_the_file(folder):
    shard = shards(folder)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{shard.name} is corrupt or truncated"):
        from_pretrained(folder)


def test_garbage_shard_header_names_the_file(folder):
    shard = shards(folder)[0]
    shard.write_bytes(b"\xff" * 8 + b"not a safetensors header" * 10)
    with pytest.raises(CheckpointError, match=shard.name):
        from_pretrained(folder)


def test_corrupt_index_names_it(folder):
    index = folder / INDEX_NAME
    index.write_text(index.read_text()[:40])
    with pytest.raises(CheckpointError, match=f"{INDEX_NAME} is not a valid shard index"):
        from_pretrained(folder)


def test_index_without_weight_map_names_it(folder):
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match=INDEX_NAME):
        from_pretrained(folder)


def test_missing_shard_names_it(folder):
    shard = shards(folder)[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name} is missing"):
        from_pretrained(folder)


def test_wrong_shape_names_the_tensor_and_both_shapes(folder):
    shard = shards(folder)[0]
    state = load_file(str(shard))
    name = next(k for k, v in state.items() if v.ndim == 2)
    good = tuple(state[name].shape)
    bad = (good[0] + 1, good[1])
    state[name] = torch.zeros(bad, dtype=state[name].dtype)
    save_file(state, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        from_pretrained(folder)
    msg = str(e.value)
    assert name in msg and str(bad) in msg and str(good) in msg and INDEX_NAME in msg


def test_tensor_the_model_lacks_is_an_error(folder):
    shard = shards(folder)[0]
    state = load_file(str(shard))
    state["not.a.parameter"] = torch.zeros(2)
    save_file(state, str(shard), metadata={"format": "pt"})
    index = json.loads((folder / INDEX_NAME).read_text())
    index["weight_map"]["not.a.parameter"] = shard.name
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not.a.parameter"):
        from_pretrained(folder)


@pytest.mark.parametrize("text, words", [
    ("{not json", "config.json is not a valid PerceptionConfig"),
    (json.dumps({"preset": "tiny", "backbone": {"no_such_field": 1}}), "config.json is not a valid PerceptionConfig"),
    (None, "config.json is missing"),
])
def test_bad_config_names_it(folder, text, words):
    cfg = folder / "config.json"
    if text is None:
        cfg.unlink()
    else:
        cfg.write_text(text)
    with pytest.raises(CheckpointError, match=words):
        from_pretrained(folder)


class Trap:
    """Unpickling this would run code: it records the call instead of doing harm."""

    calls = []

    def __reduce__(self):
        return (Trap.calls.append, ("unpickled",))


def test_pickle_files_are_never_loaded(folder, monkeypatch):
    torch.save({"weight": Trap()}, folder / "pytorch_model.bin")
    (folder / "model.pt").write_bytes(pickle.dumps(Trap()))

    def refuse(*a, **k):
        raise AssertionError("pickle was used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert from_pretrained(folder) is not None
    assert Trap.calls == []


def _sam_head():
    from perception.config import MaskHeadConfig
    from perception.heads.mask import SamMaskHead

    torch.manual_seed(0)
    return SamMaskHead(MaskHeadConfig(kind="sam", dim=32), 32, {"grid": 16})


def test_sam_checkpoint_loads_weights_only(tmp_path):
    head = _sam_head()
    good = tmp_path / "sam_ok.pth"
    torch.save({k: v.clone() for k, v in head.sam.state_dict().items()}, good)
    head.load_sam_checkpoint(str(good))  # plain tensors load

    evil = tmp_path / "sam_evil.pth"
    torch.save({"mask_decoder.iou_token.weight": Trap()}, evil)
    Trap.calls.clear()
    with pytest.raises(ValueError, match=f"SAM checkpoint '{evil}' could not be read"):
        head.load_sam_checkpoint(str(evil))
    assert Trap.calls == []  # refused by weights_only=True, nothing ran


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b""), "could not be read"),
    (lambda p: p.write_bytes(b"PK\x03\x04 truncated zip"), "could not be read"),
    (lambda p: torch.save({"prompt_encoder.bogus": torch.zeros(1)}, p), "does not match"),
    (None, "not found"),
])
def test_sam_checkpoint_errors_name_the_file(tmp_path, make, words):
    path = tmp_path / "sam_vit_x.pth"
    if make is not None:
        make(path)
    with pytest.raises((ValueError, FileNotFoundError), match=words) as e:
        _sam_head().load_sam_checkpoint(str(path))
    assert str(path) in str(e.value)


def _tree(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_interrupted_save_keeps_the_previous_checkpoint(saved, tiny_model, tmp_path, monkeypatch):
    target = shutil.copytree(saved, tmp_path / "run" / "tiny")
    before = _tree(target)

    def dies_midway(state, folder, prefix, index_name):
        (folder / f"{prefix}-00001-of-00002.safetensors").write_bytes(b"half a shard")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_sharded", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny_model, target)
    assert _tree(target) == before  # untouched
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]  # no temp or .old folders left
    monkeypatch.undo()
    from_pretrained(target)


def test_save_over_an_existing_checkpoint_leaves_no_temp_folders(saved, tiny_model, tmp_path):
    target = shutil.copytree(saved, tmp_path / "run" / "tiny")
    (target / "stale.txt").write_text("from an older save")
    save_pretrained(tiny_model, target)
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]
    assert not (target / "stale.txt").exists()  # replaced as a whole, not merged
    from_pretrained(target)
