"""A second backbone family (Qwen2-VL) behind the same adapter interface; heads, data, UI unchanged."""

import numpy as np
import pytest
import torch

import perception
from perception.backbone import build_backbone
from perception.backbone.qwen2vl import Qwen2VLBackbone, mrope_position_ids, patchify
from perception.config import BackboneConfig
from perception.pipeline import Pipeline, backbone_tokenizer
from perception.presets import get_preset


@pytest.fixture(scope="module")
def qwen_model(tiny_tokenizer):
    """Qwen2VLForConditionalGeneration from a tiny config + SAM-class mask head + LoRA."""
    from perception.lora import apply_lora
    from perception.model import PerceptionModel

    torch.manual_seed(0)
    m = PerceptionModel(get_preset("tiny-qwen2vl"), tiny_tokenizer)
    apply_lora(m)
    return m.eval()


# --- the adapter's pieces -------------------------------------------------------------------------
def test_patchify_matches_the_qwen2vl_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    x = np.random.default_rng(0).random((3, 56, 84), dtype=np.float32)
    ref, gh, gw = Qwen2VLImageProcessorPil().patchify(x, 7, 2, 2)
    ours, grid = patchify(torch.from_numpy(x)[None], 7, 2, 2)
    assert grid.tolist() == [[1, gh, gw]] and torch.equal(ours, torch.from_numpy(np.ascontiguousarray(ref)))
    with pytest.raises(ValueError, match="multiple of"):
        patchify(torch.zeros(1, 3, 50, 50), 7, 2, 2)


def test_mrope_positions_match_transformers_get_rope_index(qwen_model):
    bb = qwen_model.backbone
    img = qwen_model.prompts.image_id
    g = 4
    ids = torch.tensor([[5, 6] + [img] * g * g + [7, 8, 9], [5] + [img] * g * g + [7, 8, 9, 0]])
    mask = torch.tensor([[1] * 21, [1] * 20 + [0]])
    ours, deltas = mrope_position_ids(ids, img, g, mask)
    hf = bb.model.model
    ref, ref_deltas = hf.get_rope_index(ids, mm_token_type_ids=(ids == img).int(),
                                        image_grid_thw=torch.tensor([[1, 2 * g, 2 * g]] * 2), attention_mask=mask)
    assert torch.equal(ours, ref) and torch.equal(deltas.flatten(), ref_deltas.flatten())
    assert ours[:, 0, 2].tolist() == [2, 2, 2] and ours[:, 0, 2 + g * g].tolist() == [2 + g] * 3  # text resumes at start + g
    with pytest.raises(ValueError, match="image block of 3"):
        mrope_position_ids(torch.tensor([[1, img, img, img, 2]]), img, g)


def test_kv_cache_decoding_equals_a_full_forward(qwen_model):
    """The prefill stores M-RoPE offsets; one cached decoding step gives the full forward's logits."""
    bb = qwen_model.backbone
    p = qwen_model.prompts
    enc = p.encode([("Find the red circle.", None)], add_generation_prompt=True)
    ids = torch.tensor([enc.input_ids + [p.loc_id]])
    S = qwen_model.config.backbone.image_size
    with torch.no_grad():
        state = qwen_model.encode_images(torch.randn(1, 3, S, S))
        full_logits, full_hidden, _ = bb.forward_embeds(qwen_model.embed(ids, state))
        _, _, past = bb.forward_embeds(qwen_model.embed(ids[:, :-1], state), use_cache=True)
        step_logits, step_hidden, _ = bb.forward_embeds(bb.embed_tokens(ids[:, -1:]), past_key_values=past, use_cache=True)
    assert torch.allclose(step_logits[0, -1], full_logits[0, -1], atol=1e-4)
    assert torch.allclose(step_hidden[0, -1], full_hidden[0, -1], atol=1e-4)


# --- the same contracts as the LLaVA adapter -----------------------------------------------------
def test_shapes_and_loss(qwen_model, scene):
    from perception.data.collate import Collator

    bb = qwen_model.backbone
    assert isinstance(bb, Qwen2VLBackbone) and bb.num_image_tokens == 16 and bb.hidden_size == 64
    batch = Collator(qwen_model.config, qwen_model.tokenizer, bb.num_image_tokens)([scene, scene])
    with torch.no_grad():
        vis = bb.encode_images(batch["pixel_values"])
        assert vis.tokens.shape == (2, 16, 64) and vis.maps["grid"].shape == (2, 64, 4, 4)
        assert torch.equal(vis.maps["grid"][1, :, 1, 2], vis.tokens[1, 1 * 4 + 2])  # raster order
        logits, hidden, _ = bb.forward_embeds(qwen_model.embed(batch["input_ids"], qwen_model.encode_images(batch["pixel_values"])),
                                              batch["attention_mask"])
        assert logits.shape[:2] == hidden.shape[:2] == batch["input_ids"].shape and logits.shape[-1] == len(qwen_model.tokenizer)
    losses = qwen_model(batch)
    assert {"loss", "ce", "mask_bce", "mask_dice", "box_l1", "box_giou", "click"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_lora_only_on_the_language_model(qwen_model):
    lora = [n for n, _ in qwen_model.named_parameters() if "lora_" in n]
    assert lora and all(n.startswith("backbone.model.model.language_model.layers.") for n in lora)
    assert {n.split(".")[-4] for n in lora} == {"q_proj", "v_proj"}
    visual = [p for n, p in qwen_model.named_parameters() if n.startswith("backbone.model.model.visual.")]
    assert visual and not any(p.requires_grad for p in visual)
    assert all(p.requires_grad for n, p in qwen_model.named_parameters() if n.startswith(("box_head.", "mask_head.", "region_encoder.")))


def test_chat_end_to_end_with_regions(qwen_model, scene):
    pipe = Pipeline(qwen_model)
    W, H = scene.image.size
    regions = [perception.Region(point=(W // 2, H // 2)), perception.Region(box=(1, 2, 50, 60))]
    ans = pipe.chat(scene.image, "Compare <region1> and <region2>.", regions=regions, max_new_tokens=6)
    assert isinstance(ans, perception.Answer) and isinstance(ans.text, str) and len(ans.history) == 2
    for o in ans.objects:
        assert o.mask.shape == (H, W)
    again = pipe.chat(scene.image, "And now?", history=ans.history, max_new_tokens=3)
    assert len(again.history) == 4
    assert pipe.segment_point(scene.image, (W // 2, H // 2)).shape == (H, W)


def test_save_load_round_trip_is_identical(qwen_model, scene, tmp_path):
    from perception.checkpoint import from_pretrained, save_pretrained

    save_pretrained(qwen_model, tmp_path / "q")
    back = from_pretrained(tmp_path / "q")
    assert isinstance(back.backbone, Qwen2VLBackbone) and back.config == qwen_model.config
    a = Pipeline(qwen_model).chat(scene.image, "Find the red circle.", max_new_tokens=6)
    b = Pipeline(back).chat(scene.image, "Find the red circle.", max_new_tokens=6)
    assert a.raw == b.raw
    sa, sb = qwen_model.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_qwen_uses_the_tiny_tokenizer_and_kind_errors():
    cfg = get_preset("tiny-qwen2vl")
    from perception.tokenizer import build_tiny_tokenizer

    assert len(backbone_tokenizer(cfg)) == len(build_tiny_tokenizer())
    real = get_preset("qwen2-vl-2b")
    assert real.backbone.name_or_path == "Qwen/Qwen2-VL-2B-Instruct" and real.mask_head.sam_variant == "vit_h"
    assert real.backbone.image_size % 28 == 0 and real.lora.enabled
    with pytest.raises(ValueError, match="qwen2vl"):
        build_backbone(BackboneConfig(kind="nope"), 10)
    with pytest.raises(ValueError, match="qwen_config"):
        build_backbone(BackboneConfig(kind="qwen2vl"), 10)


def test_trainer_runs_on_the_qwen_family(tmp_path):
    """The unchanged trainer, collator and heads drive the second family (2 steps, then reload)."""
    from perception.checkpoint import from_pretrained
    from perception.config import TrainConfig
    from perception.train import train

    tc = TrainConfig.from_dict({"model": "tiny-qwen2vl", "output_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 2,
                                "lr": 1e-3, "warmup": 1, "save_every": 2, "eval_every": 0, "data": {"num_workers": 0}})
    out = train(tc, progress=False)
    model = from_pretrained(out / (out / "latest").read_text().strip())
    assert isinstance(model.backbone, Qwen2VLBackbone)
