"""The tiny recipe's parts: dense token targets, the region read-out, ROI region crops, click boxes,
warm start, exclusive decoding."""

import numpy as np
import pytest
import torch

from perception.data.token_targets import IGNORE, object_targets, token_targets
from perception.geometry import ImageFrame, boxes_of_masks, context_boxes, roi_crop

ATTRS = [["small", "large"], ["red", "blue"], ["circle", "square"]]


def _two_objects():
    """A 40 x 40 image on a 4 x 4 token grid (cells of 10 px): a large red square covering cells
    (row 0-1, col 0-1) and a small blue circle inside cell (row 3, col 3)."""
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 0:20, 0:20] = True
    masks[1, 32:38, 32:38] = True
    boxes = np.array([[0, 0, 20, 20], [32, 32, 38, 38]], float)
    return ["large red square", "small blue circle"], masks, boxes


def test_token_targets_centre_and_cover():
    labels, masks, boxes = _two_objects()
    t = token_targets(labels, masks, boxes, ImageFrame(40, 40, 160), 4, ATTRS, min_cover=0.2)
    assert t.shape == (16, 6)
    centre, cover = t[:, :3], t[:, 3:]
    # the square's centre (10, 10) lies in cell row 1, col 1 = token 5; the circle's (35, 35) in token 15
    assert centre[5].tolist() == [2, 1, 2] and centre[15].tolist() == [1, 2, 1]
    assert (centre.sum(1) > 0).sum() == 2
    # cover: the square covers tokens 0, 1, 4, 5 fully; the circle 36% of token 15
    assert all(cover[i].tolist() == [2, 1, 2] for i in (0, 1, 4, 5))
    assert cover[15].tolist() == [1, 2, 1]
    assert (cover.sum(1) > 0).sum() == 5


def test_token_targets_unknown_words_are_ignored():
    labels, masks, boxes = _two_objects()
    t = token_targets(["large red square", "a dog"], masks, boxes, ImageFrame(40, 40, 160), 4, ATTRS)
    assert (t == IGNORE).all(), "a label without the group's word makes the whole group unknown"
    empty = token_targets([], np.zeros((0, 40, 40), bool), np.zeros((0, 4)), ImageFrame(40, 40, 160), 4, ATTRS)
    assert (empty == 0).all(), "no objects: every cell is 'none'"


def test_boxes_of_masks_and_roi_crop():
    m = torch.zeros(2, 64, 64)
    m[0, 10:20, 30:50] = 1
    boxes, ok = boxes_of_masks(m)
    assert ok.tolist() == [True, False]
    assert torch.allclose(boxes[0] * 64, torch.tensor([30.0, 10.0, 50.0, 20.0]))
    assert boxes[1].abs().sum() == 0
    crop = roi_crop(m[:1, None], boxes[:1], 8)
    assert crop.shape == (1, 1, 8, 8) and torch.allclose(crop, torch.ones_like(crop)), "the box's crop is all mask"
    grown = context_boxes(boxes[:1], 0.25)
    assert torch.allclose(grown * 64, torch.tensor([[25.0, 7.5, 55.0, 22.5]]))
    tiny = context_boxes(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), 0.0, min_side=0.1)
    assert torch.allclose(tiny, torch.tensor([[0.45, 0.45, 0.55, 0.55]]))


def test_roi_region_encoder_sees_shape_of_small_objects(tiny_model):
    """Two small masks of different shape at the same place give different ROI crops (the
    whole-frame 32 x 32 view of the old encoder made them nearly identical)."""
    side = 64
    a = torch.zeros(side, side)
    a[30:34, 30:34] = 1  # a 4 x 4 square
    b = torch.zeros(side, side)
    b[30:34, 31:33] = 1
    b[31:33, 30:34] = 1  # a plus sign in the same box
    boxes, _ = boxes_of_masks(torch.stack([a, b]))
    crops = roi_crop(torch.stack([a, b])[:, None], context_boxes(boxes, 0.25), 16)
    assert (crops[0] - crops[1]).abs().sum() > 5
    enc = tiny_model.region_encoder
    pixels = torch.zeros(2, tiny_model.config.mask_head.dim, 80, 80)
    out = enc(boxes, torch.stack([a, b]), pixels)
    assert out.shape == (2, tiny_model.backbone.hidden_size)
    assert not torch.allclose(out[0], out[1])


def test_model_trains_token_aux(tiny_model, tiny_tokenizer):
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample

    col = Collator(tiny_model.config, tiny_tokenizer, tiny_model.backbone.num_image_tokens)
    batch = col([make_sample(s, tasks=["count"]) for s in (1, 2)])
    assert batch["token_targets"].shape == (2, 100, 6)
    out = tiny_model(batch)
    assert "token_aux" in out and torch.isfinite(out["token_aux"]) and out["token_aux"] > 0


def test_warm_start_copies_shared_tensors(tmp_path):
    from perception.checkpoint import save_pretrained
    from perception.config import TrainConfig
    from perception.train import build_model

    small = {"backbone": {"text": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
                          "stem": {"channels": [8, 16, 32, 48], "token_grid": 10}},
             "mask_head": {"dim": 32}}
    # the old model has a wider region encoder: same-named tensors of another shape stay fresh
    old = build_model(TrainConfig.from_dict({"model": "tiny", "model_overrides": {**small, "region": {"hidden": 64}}}))
    save_pretrained(old, tmp_path / "old")
    new = build_model(TrainConfig.from_dict({"model": "tiny", "init_from": str(tmp_path / "old"), "model_overrides": small}))
    assert torch.equal(new.backbone.stem.stages[0][0].weight, old.backbone.stem.stages[0][0].weight)
    assert not torch.equal(new.region_encoder.box_mlp[0].weight[:64], old.region_encoder.box_mlp[0].weight)
    assert new.region_encoder.box_mlp[0].weight.shape[0] == 128


def test_warm_start_skips_prefixes_and_freeze_stops_training(tmp_path):
    """init_skip keeps tensors under its prefixes fresh; freeze takes parameters out of training
    (and out of the optimizer); a freeze prefix that matches nothing is an error naming it."""
    from perception.checkpoint import save_pretrained
    from perception.config import TrainConfig
    from perception.train import build_model
    from perception.training.engines import param_groups

    small = {"backbone": {"text": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
                          "stem": {"channels": [8, 16, 32, 48], "token_grid": 10}},
             "mask_head": {"dim": 32}}
    old = build_model(TrainConfig.from_dict({"model": "tiny", "model_overrides": small}))
    save_pretrained(old, tmp_path / "old")
    tc = TrainConfig.from_dict({"model": "tiny", "init_from": str(tmp_path / "old"), "model_overrides": small,
                                "init_skip": ["backbone.llm"], "freeze": ["backbone.stem"]})
    new = build_model(tc)
    assert torch.equal(new.backbone.stem.stages[0][0].weight, old.backbone.stem.stages[0][0].weight)
    assert torch.equal(new.mask_head.query_proj[0].weight, old.mask_head.query_proj[0].weight)
    llm = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(new.backbone.llm.model.get_parameter(llm), old.backbone.llm.model.get_parameter(llm))
    assert not any(p.requires_grad for p in new.backbone.stem.parameters())
    optimised = {id(p) for g in param_groups(new, tc) for p in g["params"]}
    assert not any(id(p) in optimised for p in new.backbone.stem.parameters())
    assert all(p.requires_grad for p in new.backbone.llm.parameters())
    with pytest.raises(ValueError, match="'backbone.stme'"):
        build_model(TrainConfig.from_dict({"model": "tiny", "model_overrides": small, "freeze": ["backbone.stme"]}))


def test_a_smaller_token_grid_pools_the_stride16_map():
    """token_grid 5 at 160 px: 25 image tokens, each the average of a 2x2 cell; a grid that does not
    divide the stride-16 map is refused by name."""
    from perception.backbone.stem import StemLlamaBackbone
    from perception.presets import get_preset

    cfg = get_preset("tiny").backbone
    cfg.stem.token_grid = 5
    bb = StemLlamaBackbone(cfg, 64)
    assert bb.num_image_tokens == 25
    feats = bb.encode_images(torch.zeros(2, 3, 160, 160))
    assert feats.tokens.shape[:2] == (2, 25) and feats.maps["s16"].shape[-1] == 10
    cfg.stem.token_grid = 3
    with pytest.raises(ValueError, match="token_grid 3"):
        StemLlamaBackbone(cfg, 64)


def test_retired_options_of_saved_configs():
    """A saved config holding a retired option's surviving value loads; any other value is refused by name."""
    from perception.config import BoxHeadConfig, PerceptionConfig
    from perception.heads import BoxHead
    from perception.presets import get_preset

    d = get_preset("tiny").to_dict()
    d["version"] = 1
    d["region"]["mode"] = "roi"
    assert PerceptionConfig.from_dict(d) == get_preset("tiny")
    d["region"]["mode"] = "frame"
    with pytest.raises(ValueError, match="region.mode='frame'.*commit"):
        PerceptionConfig.from_dict(d)
    with pytest.raises(ValueError, match="box_head.source"):
        BoxHead(BoxHeadConfig(source="mask-full"), 64)


def test_loc_feedback_training_and_generation_agree(tiny_model, tiny_tokenizer):
    """Teacher forcing adds the region encoding of each <loc>'s object to that <loc>'s input, as
    generation does with the object it decoded: given the same mask, both give the same logits."""
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample
    from perception.decoding import ObjectDecoder
    from perception.geometry import ImageFrame

    assert tiny_model.config.loc_feedback
    col = Collator(tiny_model.config, tiny_tokenizer, tiny_model.backbone.num_image_tokens)
    batch = col([make_sample(5, tasks=["ground_all"])])
    assert batch["loc_fed"].all() and len(batch["loc_fed"]) == (batch["input_ids"] == tiny_model.loc_id).sum()
    with torch.no_grad():
        state = tiny_model.encode_images(batch["pixel_values"])
        ids = batch["input_ids"]
        plain = tiny_model.embed(ids, state)
        bidx = torch.zeros(len(batch["loc_fed"]), dtype=torch.long)
        fb = tiny_model.feedback_embeds(state, batch["loc_masks"], bidx)
        fed = tiny_model.embed(ids, state, loc_feedback=(batch["loc_fed"], fb))
        is_loc = ids[0] == tiny_model.loc_id
        assert torch.allclose(fed[0, is_loc], plain[0, is_loc] + fb)
        assert torch.equal(fed[0, ~is_loc], plain[0, ~is_loc])
        S = tiny_model.config.backbone.image_size
        decoder = ObjectDecoder(tiny_model, state, ImageFrame(S, S, S))
        out = decoder(torch.randn(1, tiny_model.backbone.hidden_size))
        assert out.shape == (1, tiny_model.backbone.hidden_size)
        (obj,) = decoder.decoded
        assert obj.mask.shape == (S, S) and obj.mask.any()
        loss = tiny_model(batch)["loss"]
        assert torch.isfinite(loss)


def test_object_targets_and_region_object():
    from perception.data.collate import region_object
    from perception.data.sample import Sample
    from perception.types import Region

    labels, masks, boxes = _two_objects()
    t = object_targets(labels + ["a dog"], ATTRS)
    assert t.tolist() == [[2, 1, 2], [1, 2, 1], [IGNORE, IGNORE, IGNORE]]
    s = Sample(image=None, turns=[], boxes=boxes, masks=masks, labels=labels)
    assert region_object(s, Region(point=(35, 34))) == 1
    assert region_object(s, Region(point=(25, 25))) is None
    assert region_object(s, Region(box=(1, 0, 20, 19))) == 0
    assert region_object(s, Region(mask=masks[1])) == 1


def test_model_trains_region_aux(tiny_model, tiny_tokenizer):
    """Every region embedding and every fed-back <loc> embedding gets its object's words as targets."""
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample

    assert tiny_model.config.loss.region_aux > 0 and hasattr(tiny_model, "region_aux")
    col = Collator(tiny_model.config, tiny_tokenizer, tiny_model.backbone.num_image_tokens)
    samples = [make_sample(s, tasks=["region_shape"]) for s in (1, 2)] + [make_sample(3, tasks=["ground_all"])]
    batch = col(samples)
    assert batch["region_attrs"].shape == (2, 3) and (batch["region_attrs"] > 0).all()
    n_loc = int((batch["input_ids"] == tiny_model.loc_id).sum())
    assert batch["loc_attrs"].shape == (n_loc, 3) and (batch["loc_attrs"] > 0).all()
    for row, s in zip(batch["region_attrs"].tolist(), samples[:2]):
        shape = s.turns[0].expect[0]
        assert tiny_model.config.token_aux.attributes[2][row[2] - 1] == shape, "the region's target is its object's shape"
    out = tiny_model(batch)
    assert torch.isfinite(out["region_aux"]) and out["region_aux"] > 0


def test_exclusive_decoding_grounds_each_object_once(tiny_model, monkeypatch):
    """Two <loc>s whose mask logits peak on the same object: without exclusive decoding both report
    it; with mask_head.exclusive the second takes the next object."""
    from perception.decoding import ObjectDecoder
    from perception.geometry import ImageFrame

    logits = torch.full((1, 80, 80), -10.0)
    logits[:, 10:20, 10:20] = 5.0  # object 1, the peak
    logits[:, 50:60, 50:60] = 2.0  # object 2, less confident
    monkeypatch.setattr(tiny_model, "decode_states", lambda state, states, bidx: (logits[: len(states)], torch.zeros(len(states), 4)))
    monkeypatch.setattr(tiny_model, "feedback_embeds", lambda state, masks, bidx: torch.zeros(len(masks), 4))
    D = tiny_model.backbone.hidden_size
    frame = ImageFrame(80, 80, 160)
    cfg = tiny_model.config.mask_head

    def decode_two():
        dec = ObjectDecoder(tiny_model, _FakeState(), frame)
        dec(torch.zeros(1, D))
        dec(torch.zeros(1, D))
        return dec.objects("<p>x</p><loc><p>y</p><loc>")

    try:
        cfg.exclusive = False
        a, b = decode_two()
        assert a.box == b.box == (10.0, 10.0, 20.0, 20.0)
        cfg.exclusive = True
        a, b = decode_two()
        assert a.box == (10.0, 10.0, 20.0, 20.0) and b.box == (50.0, 50.0, 60.0, 60.0)
        assert (a.phrase, b.phrase) == ("x", "y")
    finally:
        cfg.exclusive = True


class _FakeState:
    class mask:
        pixels = torch.zeros(1, 1, 80, 80)
