"""The perception library on tiny random models: contracts, not quality."""

import numpy as np
import pytest
import torch

import perception
from perception.model import merge_embeddings, perception_states
from perception.pipeline import Pipeline
from perception.tokens import IMAGE_TOKEN, PERCEPTION_TOKEN, REGION_TOKEN, parse_answer

PRESET_FIXTURES = ["tiny_model", "tiny_llava_model"]


@pytest.fixture(params=PRESET_FIXTURES)
def model(request):
    return request.getfixturevalue(request.param)


# --- perception-token position ----------------------------------------------------------------
def test_perception_states_reads_the_position_before_each_loc():
    loc = 7
    ids = torch.tensor([[1, 2, loc, 3, loc], [loc, 4, 5, loc, 6]])
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    states, b, t = perception_states(hidden, ids, loc)
    assert b.tolist() == [0, 0, 1] and t.tolist() == [2, 4, 3]  # loc at t=0 has no predicting position
    assert torch.equal(states, torch.stack([hidden[0, 1], hidden[0, 3], hidden[1, 2]]))


def test_merge_embeddings_names_both_counts():
    emb = torch.zeros(1, 4, 2)
    ids = torch.tensor([[0, 9, 9, 0]])
    with pytest.raises(ValueError, match=r"2 placeholder.*3 region"):
        merge_embeddings(emb, ids, 9, torch.ones(3, 2), "region")
    out = merge_embeddings(emb, ids, 9, torch.tensor([[1.0, 2], [3, 4]]), "region")
    assert out[0, 1].tolist() == [1, 2] and out[0, 2].tolist() == [3, 4] and out[0, 0].tolist() == [0, 0]


# --- shape contracts ----------------------------------------------------------------------------
def test_shapes(model, scene):
    from perception.data.collate import Collator

    batch = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens)([scene, scene])
    with torch.no_grad():
        state = model.encode_images(batch["pixel_values"], batch.get("mask_pixel_values"))
        D = model.backbone.hidden_size
        assert state.visual.tokens.shape == (2, model.backbone.num_image_tokens, D)
        states = torch.randn(3, D)
        logits, boxes = model.decode_states(state, states, torch.tensor([0, 1, 1]))
        assert logits.ndim == 3 and logits.shape[0] == 3 and logits.shape[1] == logits.shape[2]
        assert boxes.shape == (3, 4) and (boxes[:, 2:] >= boxes[:, :2]).all()
        clicks = model.mask_head.from_points(state.mask, torch.rand(2, 2), torch.tensor([0, 1]))
        assert clicks.shape[0] == 2
        losses = model(batch)
    assert {"loss", "ce", "mask_bce", "mask_dice", "box_l1", "box_giou", "click"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


# --- special tokens typed by users ----------------------------------------------------------------
@pytest.mark.parametrize("typed", [IMAGE_TOKEN, PERCEPTION_TOKEN, REGION_TOKEN, "<p>", "</s>", "<s>"])
def test_typed_special_tokens_stay_plain_text(tiny_model, typed):
    p = tiny_model.prompts
    enc = p.encode([(f"look {typed} here", None)], add_generation_prompt=True)
    specials = {p.image_id, p.region_id, p.loc_id, tiny_model.tokenizer.eos_token_id}
    body = enc.input_ids[1 + len(p._user_prefix_first) + p.n_image :]
    assert not specials & set(body)
    assert enc.input_ids.count(p.image_id) == p.n_image


def test_chat_with_typed_image_token_does_not_break_image_count(tiny_model, scene):
    ans = Pipeline(tiny_model).chat(scene.image, "What is <image> and <loc>?", max_new_tokens=4)
    assert isinstance(ans.text, str)


# --- end-to-end chat on random models ---------------------------------------------------------------
def test_chat_end_to_end(model, scene):
    pipe = Pipeline(model)
    W, H = scene.image.size
    m = scene.masks[0]
    regions = [perception.Region(point=(W // 2, H // 2)), perception.Region(box=(1, 2, 50, 60)), perception.Region(mask=m)]
    ans = pipe.chat(scene.image, "Compare <region1>, <region2> and <region3>.", regions=regions, max_new_tokens=8)
    assert isinstance(ans, perception.Answer) and isinstance(ans.text, str)
    assert PERCEPTION_TOKEN not in ans.text and "<p>" not in ans.text
    assert len(ans.history) == 2 and ans.history[0]["regions"]
    for o in ans.objects:
        assert len(o.box) == 4 and o.mask.shape == (H, W) and o.mask.dtype == bool
    again = pipe.chat(scene.image, "And now?", history=ans.history, max_new_tokens=4)
    assert len(again.history) == 4
    parts = list(pipe.stream_chat(scene.image, "Find the red circle.", max_new_tokens=4))
    assert isinstance(parts[-1], perception.Answer) and all(isinstance(p, str) for p in parts[:-1])


def test_objects_are_decoded_from_generated_loc_tokens(tiny_model, scene, monkeypatch):
    """Force the LM to write '<p>x</p><loc>' and check one Grounding comes back in pixels."""
    _script_answer(tiny_model, monkeypatch)
    ans = Pipeline(tiny_model).chat(scene.image, "Find the red circle.")
    assert ans.text == "x" and len(ans.objects) == 1 and ans.objects[0].phrase == "x"
    W, H = scene.image.size
    x1, y1, x2, y2 = ans.objects[0].box
    assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
    assert ans.objects[0].mask.shape == (H, W)


def test_region_count_mismatch(tiny_model, scene):
    pipe = Pipeline(tiny_model)
    with pytest.raises(ValueError, match="regions"):
        pipe.chat(scene.image, "What is <region3>?", regions=[perception.Region(point=(1, 1)), perception.Region(point=(2, 2))])
    with pytest.raises(ValueError, match="no regions"):
        pipe.chat(scene.image, "What is <region1>?")
    # placeholders out of order map by number
    ans = pipe.chat(scene.image, "<region2> or <region1>?", regions=[perception.Region(point=(1, 1)), perception.Region(point=(2, 2))], max_new_tokens=2)
    assert ans.history[0]["regions"]


def test_segment_point(tiny_model, scene):
    m = Pipeline(tiny_model).segment_point(scene.image, (10, 12))
    assert m.shape == scene.image.size[::-1] and m.dtype == bool and m.any()


def test_malformed_generation_never_crashes():
    assert parse_answer("<p>unclosed <loc>").phrases == [None]
    assert parse_answer("</p></p><loc><p></p><loc>").phrases == [None, None]
    assert parse_answer("plain").text == "plain"


# --- LoRA ------------------------------------------------------------------------------------------
def test_lora_wraps_only_language_model_layers(tiny_llava_model):
    names = [n for n, _ in tiny_llava_model.named_modules() if n.endswith(("q_proj", "v_proj")) and hasattr(_get(tiny_llava_model, n), "lora_A")]
    assert names, "no LoRA layers injected"
    assert all(n.startswith("backbone.model.model.language_model.") for n in names)
    vision = [n for n, _ in tiny_llava_model.named_modules() if "vision_tower" in n and "lora_" in n]
    sam = [n for n, _ in tiny_llava_model.named_modules() if n.startswith("mask_head") and "lora_" in n]
    assert not vision and not sam
    trainable = {n.split(".")[0] for n, p in tiny_llava_model.named_parameters() if p.requires_grad}
    assert {"mask_head", "box_head", "region_encoder", "backbone"} <= trainable
    frozen_vision = [p.requires_grad for n, p in tiny_llava_model.named_parameters() if "vision_tower" in n]
    assert frozen_vision and not any(frozen_vision)


def _get(model, name):
    return dict(model.named_modules())[name]


# --- save / load ---------------------------------------------------------------------------------------
def test_save_load_round_trip_identical(model, scene, tmp_path):
    from perception.checkpoint import from_pretrained, save_pretrained

    save_pretrained(model, tmp_path / "ckpt")
    files = list((tmp_path / "ckpt").iterdir())
    assert all(f.stat().st_size < 10_000_000 for f in files)
    assert not any(f.suffix in (".bin", ".pt", ".pth", ".pkl") for f in files)
    loaded = from_pretrained(tmp_path / "ckpt")
    a = Pipeline(model).chat(scene.image, "Find the red circle.", max_new_tokens=6)
    b = Pipeline(loaded).chat(scene.image, "Find the red circle.", max_new_tokens=6)
    assert a.raw == b.raw
    pa = Pipeline(model).segment_point(scene.image, (20, 20))
    pb = Pipeline(loaded).segment_point(scene.image, (20, 20))
    assert np.array_equal(pa, pb)


def test_sam_vit_b_state_dict_loads_strictly():
    """segment-anything's real vit_b architecture (no weights, never run) loads into our SAM mask path."""
    from segment_anything.build_sam import build_sam_vit_b  # importable through perception.sam_modeling

    from perception.config import MaskHeadConfig
    from perception.heads import SamMaskHead

    sam = build_sam_vit_b(checkpoint=None)
    head = SamMaskHead(MaskHeadConfig(kind="sam", dim=256, sam_variant="vit_b"), lm_dim=64, map_channels={})
    head.load_sam_state_dict(sam.state_dict())
    for (k1, v1), (k2, v2) in zip(sorted(sam.state_dict().items()), sorted(head.sam.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2)


def test_a_loc_with_no_mask_grounds_nothing(tiny_model, scene, monkeypatch):
    """A <loc> whose mask has no pixel above threshold is no object (never a 1-pixel placeholder):
    the answer keeps its text and has ``objects == []``; the pairing of later <loc>s is kept."""
    _script_answer(tiny_model, monkeypatch)
    real_decode = tiny_model.decode_states
    monkeypatch.setattr(tiny_model, "decode_states",
                        lambda state, states, bidx: (torch.full_like(real_decode(state, states, bidx)[0], -8.0), torch.zeros(len(states), 4)))
    ans = Pipeline(tiny_model).chat(scene.image, "Find the purple star.")
    assert ans.text == "x" and ans.objects == [] and ans.raw.count("<loc>") == 1


def test_decoder_pairs_phrases_past_a_dropped_loc(tiny_model, monkeypatch):
    from perception.decoding import ObjectDecoder
    from perception.geometry import ImageFrame

    S = tiny_model.config.backbone.image_size
    empty = torch.full((1, S // 2, S // 2), -8.0)
    found = empty.clone()
    found[:, 10:20, 10:20] = 6.0
    queue = [empty, found]
    monkeypatch.setattr(tiny_model, "decode_states", lambda state, states, bidx: (queue.pop(0), torch.zeros(1, 4)))
    with torch.no_grad():
        state = tiny_model.encode_images(torch.zeros(1, 3, S, S))
    dec = ObjectDecoder(tiny_model, state, ImageFrame(S, S, S))
    D = tiny_model.backbone.hidden_size
    assert dec(torch.zeros(1, D)) is None  # nothing to feed back for an object that is not there
    assert dec(torch.zeros(1, D)) is not None
    (obj,) = dec.objects("<p>the purple star</p><loc> and <p>the red circle</p><loc>")
    assert obj.phrase == "the red circle" and obj.box == (20.0, 20.0, 40.0, 40.0)
    assert 0.99 < obj.score <= 1.0  # the peak probability: sigmoid(6)


def _script_answer(model, monkeypatch):
    """Force the LM to write '<p>x</p><loc>' then stop, whatever it reads."""
    p = model.prompts
    script = [p.special["<p>"], *p.text("x"), p.special["</p>"], p.loc_id, p.eos_id]
    real = model.backbone.forward_embeds
    calls = {"n": 0}

    def scripted(*a, **k):
        logits, hidden, past = real(*a, **k)
        logits = torch.full_like(logits, -1e4)
        logits[0, -1, script[min(calls["n"], len(script) - 1)]] = 0
        calls["n"] += 1
        return logits, hidden, past

    monkeypatch.setattr(model.backbone, "forward_embeds", scripted)
