"""Object tokens (issue 14; perception/objects.py): proposals, the prompt layout, the <loc> pointer,
the collated training targets, checkpoints, and the tiny-llava code path. Tiny random models."""

import dataclasses

import numpy as np
import pytest
import torch

from perception.geometry import ImageFrame
from perception.heads.proposals import centre_focal_loss, centre_heatmap, heatmap_peaks
from perception.objects import fourier_positions, match_proposals, proposal_recall
from perception.presets import get_preset
from perception.prompting import IGNORE
from perception.tokens import OBJECT_TOKEN


def _objects_model(tokenizer, preset="tiny-objects"):
    from perception.model import PerceptionModel

    cfg = get_preset(preset)
    cfg.objects = dataclasses.replace(cfg.objects, enabled=True)
    torch.manual_seed(0)
    return PerceptionModel(cfg, tokenizer).eval()


@pytest.fixture(scope="module")
def objects_model(tiny_tokenizer):
    return _objects_model(tiny_tokenizer)


def _state_with_truths(model, sample):
    """The sample's image encoded, with its ground-truth masks as the proposals ("oracle")."""
    from perception.processing import mask_side

    cfg = model.config
    frame = ImageFrame(*sample.image.size, cfg.backbone.image_size, cfg.backbone.resize_mode)
    side, K = mask_side(cfg), cfg.objects.max_objects
    masks = torch.zeros(1, K, side, side)
    for k, m in enumerate(sample.masks):
        masks[0, k] = frame.mask_to_model(m, side)
    valid = torch.zeros(1, K, dtype=torch.bool)
    valid[0, : len(sample.masks)] = True
    with torch.no_grad():
        state = model.encode_images(model.backbone.preprocess(sample.image)[None], propose=False)
        state.objects = model.object_tokens.from_masks(model.region_encoder, state.mask, masks, valid)
    return frame, state, masks


def test_tokenizer_ids_stay_put_and_the_callers_tokenizer_is_not_changed(tiny_tokenizer, objects_model):
    assert OBJECT_TOKEN not in tiny_tokenizer.get_vocab()  # the shared tokenizer (and the shipped tiny) unchanged
    tok = objects_model.tokenizer
    assert tok.convert_tokens_to_ids(OBJECT_TOKEN) == len(tiny_tokenizer)  # appended after every other id
    for t in ["<image>", "<loc>", "<region>", "<p>", "</p>", "</s>"]:
        assert tok.convert_tokens_to_ids(t) == tiny_tokenizer.convert_tokens_to_ids(t)


def test_object_tokens_are_off_by_default_and_in_no_real_preset():
    from perception.presets import PRESETS

    on = [p for p in PRESETS if get_preset(p).objects.enabled]
    assert on == ["tiny-objects"]


def test_proposal_step_shapes(objects_model, scene):
    model = objects_model
    K = model.config.objects.max_objects
    pixels = torch.stack([model.backbone.preprocess(scene.image)] * 2)
    with torch.no_grad():
        state = model.encode_images(pixels, propose=False)
        heat = model.object_tokens.proposal_head(state.mask.pixels)
        assert heat.shape == (2, *state.mask.pixels.shape[-2:])
        # force peaks: 3 confident centres in image 0, none in image 1
        fake = torch.full_like(heat, -9.0)
        fake[0, 10, 20], fake[0, 40, 40], fake[0, 70, 5] = 5.0, 4.0, 3.0
        points, bidx, slot, scores = heatmap_peaks(fake, K, 0.3, 5)
        assert points.shape == (3, 2) and bidx.tolist() == [0, 0, 0] and slot.tolist() == [0, 1, 2]
        h, w = heat.shape[-2:]
        assert torch.allclose(points[0], torch.tensor([20.5 / w, 10.5 / h]))
        assert scores[0] > scores[1] > scores[2]
        objs = model.object_tokens.propose(model.mask_head, model.region_encoder, state.mask)
    D = model.backbone.hidden_size
    assert objs.masks.shape[:2] == (2, K) and objs.boxes.shape == (2, K, 4)
    assert objs.valid.shape == (2, K) and objs.embeds.shape == (2, K, D)


def test_heatmap_target_peaks_are_the_objects(scene):
    """The centre target of a drawn scene's masks has one peak per object, each inside its object."""
    frame = ImageFrame(*scene.image.size, 160)
    masks = torch.stack([frame.mask_to_model(m, 80) for m in scene.masks])
    target = centre_heatmap(masks, (80, 80), 0.15)
    points, _, _, _ = heatmap_peaks(torch.logit(target.clamp(1e-4, 1 - 1e-4))[None], 8, 0.99, 3)
    assert len(points) == len(scene.masks)
    inside = [masks[:, int(y * 80), int(x * 80)].argmax().item() for x, y in points.tolist()]
    assert sorted(inside) == list(range(len(scene.masks)))
    perfect = centre_focal_loss(torch.logit(target.clamp(1e-4, 1 - 1e-4))[None], target[None])
    assert perfect < 0.2 * centre_focal_loss(torch.zeros(1, 80, 80), target[None])


def test_ground_truth_masks_as_proposals_come_back_as_the_object_tokens(objects_model):
    from perception.data.shapesref import make_sample

    model = objects_model
    sample = make_sample(7, tasks=["ground_A"], n_objects=4)
    n, K = len(sample.masks), model.config.objects.max_objects
    frame, state, masks = _state_with_truths(model, sample)
    objs = state.objects
    assert objs.valid[0].tolist() == [True] * n + [False] * (K - n)
    with torch.no_grad():
        for k in range(n):  # slot k is object k: its region embedding plus its position's own projection
            box = objs.boxes[0, k : k + 1]
            expect = model.region_encoder(box, masks[0, k : k + 1], state.mask.pixels) + model.object_tokens.position(
                fourier_positions(box, model.config.objects.position_freqs))
            assert torch.allclose(objs.embeds[0, k], expect[0], atol=1e-5)
        assert torch.equal(objs.embeds[0, n:], model.object_tokens.empty.expand(K - n, -1))
        box_k = torch.tensor(frame.boxes_to_model(sample.boxes[0]), dtype=torch.float32)
        assert torch.allclose(objs.boxes[0, 0], box_k, atol=1 / 80 + 1e-6)
        # in the prompt: K object tokens per turn, in slot order, every turn
        enc = model.prompts.encode([("Find the red circle.", "no"), ("And the blue one?", None)], add_generation_prompt=True)
        ids = torch.tensor([enc.input_ids])
        emb = model.embed(ids, state)
    at = (ids[0] == model.prompts.object_id).nonzero().flatten()
    assert len(at) == 2 * K
    assert torch.allclose(emb[0, at], objs.embeds[0].repeat(2, 1))
    state.objects = None  # "oracle" mode without the caller's masks: a clear error, not a silent prompt
    with pytest.raises(ValueError, match="no proposals"):
        model.embed(ids, state)


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_prompt_layout_object_tokens_follow_the_user_text_of_every_turn(objects_model, turns):
    from perception.pipeline import _encode_fitting

    model = objects_model
    K, p = model.config.objects.max_objects, model.prompts
    conv = [(f"Find the red circle {i}.", "<p>the red circle</p><loc>") for i in range(turns - 1)] + [("Count the stars.", None)]
    enc = _encode_fitting(model, conv, [[] for _ in conv], [True] * turns, 8)  # the pipeline's own encoding, history replayed
    ids = enc.input_ids
    assistant = p._assistant
    obj = [i for i, t in enumerate(ids) if t == p.object_id]
    assert len(obj) == K * turns
    runs = [obj[i * K : (i + 1) * K] for i in range(turns)]
    for (user, _), run in zip(conv, runs):
        assert run == list(range(run[0], run[0] + K))  # one contiguous run per turn
        after = run[-1] + 1
        assert ids[after : after + len(assistant)] == assistant  # ... right before " ASSISTANT:"
        before = p.tok.decode(ids[: run[0]])
        assert before.rstrip().endswith(user)  # ... right after the user's text
    assert [t for t in ids if t == p.image_id] == [p.image_id] * p.n_image  # the image once, at the start
    assert ids.index(p.image_id) < obj[0]


def test_models_without_object_tokens_keep_their_prompt(tiny_model):
    enc = tiny_model.prompts.encode([("Find the red circle.", None)], add_generation_prompt=True)
    assert tiny_model.prompts.object_id is None and tiny_model.prompts.n_object == 0
    assert not hasattr(tiny_model, "object_tokens")
    text = tiny_model.tokenizer.decode(enc.input_ids[-20:])
    assert text.endswith("Find the red circle. ASSISTANT: ")


def test_collated_targets_point_at_the_shuffled_ground_truth(objects_model):
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample

    model = objects_model
    cfg = dataclasses.replace(model.config, objects=dataclasses.replace(model.config.objects, drop_prob=0.0, extra_prob=1.0))
    col = Collator(cfg, model.tokenizer, model.backbone.num_image_tokens, seed=3)
    samples = [make_sample(s, tasks=["ground_all"], n_objects=3) for s in (1, 2)]
    batch = col(samples)
    side = batch["object_masks"].shape[-1]
    assert batch["object_masks"].shape == (2, 8, side, side)
    k = 0
    for b, s in enumerate(samples):
        frame = ImageFrame(*s.image.size, 160)
        assert int(batch["object_valid"][b].sum()) == len(s.masks) + 1  # the objects and one extra box
        assert int(batch["object_is_gt"][b].sum()) == len(s.masks)
        for t in s.turns:
            for obj in t.targets:
                slot = int(batch["loc_slots"][k])
                assert torch.allclose(batch["object_masks"][b, slot], frame.mask_to_model(s.masks[obj], side))
                k += 1
    assert k == len(batch["loc_slots"]) > 0
    dropped = Collator(dataclasses.replace(cfg, objects=dataclasses.replace(cfg.objects, drop_prob=1.0, extra_prob=0.0)),
                       model.tokenizer, model.backbone.num_image_tokens, seed=3)(samples)
    assert (dropped["loc_slots"] == IGNORE).any()
    assert (dropped["object_is_gt"] & ~dropped["object_valid"]).sum(1).tolist() == [1, 1]


def test_selection_loss_falls_in_a_few_steps(tiny_tokenizer):
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample

    model = _objects_model(tiny_tokenizer).train()
    col = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, seed=0)
    batch = col([make_sample(s, tasks=["ground_A", "ground_S", "ground_R"], n_objects=4) for s in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        out = model(batch)
        losses.append(float(out["pointer"].detach()))
        opt.zero_grad()
        (out["pointer"] + out["proposal"]).backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses


def test_match_targets_mark_what_each_turn_asks_for(objects_model):
    """turn_match: a grounding turn marks its objects' slots, a no-target turn marks none, a region
    question has no target (-1)."""
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample

    model = objects_model
    cfg = dataclasses.replace(model.config, objects=dataclasses.replace(model.config.objects, drop_prob=0.0, extra_prob=0.0))
    col = Collator(cfg, model.tokenizer, model.backbone.num_image_tokens, seed=1)
    samples = [make_sample(7, tasks=["ground_all"], n_objects=3), make_sample(8, tasks=["ground_none"], n_objects=3),
               make_sample(9, tasks=["region_color"], n_objects=3)]
    batch = col(samples)
    tm = batch["turn_match"]
    assert tm.shape == (sum(len(s.turns) for s in samples), 8)
    k = 0
    for t in samples[0].turns:
        slots = batch["loc_slots"][k:k + len(t.targets)].tolist()
        k += len(t.targets)
        assert sorted(tm[0].nonzero().flatten().tolist()) == sorted(slots) and len(slots) > 0
    assert tm[0].min() == 0 and (tm[1] == 0).all() and (tm[2] == -1).all()


def test_match_loss_falls_in_a_few_steps(tiny_tokenizer):
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample

    model = _objects_model(tiny_tokenizer).train()
    assert model.config.loss.match > 0 and model.object_tokens.match is not None
    col = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, seed=0)
    batch = col([make_sample(s, tasks=["ground_A", "ground_none", "ground_all"], n_objects=4) for s in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        torch.manual_seed(0)  # the same own-proposal draw every step
        out = model(batch)
        losses.append(float(out["match"].detach()))
        opt.zero_grad()
        out["match"].backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses


def test_own_proposals_replace_matched_truths_and_add_false_positives(objects_model, monkeypatch):
    """with_own_proposals: a proposal matching a shown object takes its slot; an object no proposal
    found keeps its true mask; a proposal of a dropped object stays out; a false positive fills a
    free slot as a valid non-object."""
    from perception.objects import with_own_proposals

    model = objects_model
    side, K = 8, model.config.objects.max_objects
    truth = torch.zeros(1, K, side, side)
    truth[0, 0, :4, :4] = 1  # shown, found (with a slightly different mask)
    truth[0, 1, 4:, 4:] = 1  # shown, missed
    truth[0, 2, :4, 4:] = 1  # dropped, found
    valid = torch.tensor([[True, True, False] + [False] * (K - 3)])
    is_gt = torch.tensor([[True, True, True] + [False] * (K - 3)])
    props = torch.zeros(1, K, side, side)
    props[0, 0, :4, :3] = 1  # IoU 0.75 with object 0
    props[0, 1, :4, 4:] = 1  # the dropped object
    props[0, 2, 5:, :2] = 1  # nothing
    pvalid = torch.tensor([[True, True, True] + [False] * (K - 3)])
    monkeypatch.setattr(model.object_tokens, "proposal_masks", lambda mask_head, feats: (props, pvalid, pvalid.float()))
    feats = type("F", (), {"select": lambda self, rows: self})()
    masks, v = with_own_proposals(model.object_tokens, None, feats, truth, valid, is_gt, torch.tensor([0]))
    assert torch.equal(masks[0, 0], props[0, 0]) and torch.equal(masks[0, 1], truth[0, 1])
    assert torch.equal(masks[0, 2], truth[0, 2]) and not v[0, 2]  # the dropped slot is untouched
    assert torch.equal(masks[0, 3], props[0, 2]) and v[0, 3]  # the false positive, in the first free slot
    assert int(v.sum()) == 3 and torch.equal(truth[0, 0, :4, :4], torch.ones(4, 4))  # inputs not changed


def test_the_pointer_reports_the_chosen_proposal_once(objects_model):
    """A forced answer with three <loc>s over two proposals: two different proposals, then nothing."""
    from perception.data.shapesref import make_sample
    from perception.decoding import PointerDecoder, answer_decoder
    from perception.generation import generate
    from perception.geometry import mask_iou

    model = objects_model
    sample = make_sample(11, tasks=["ground_A"], n_objects=2)
    frame, state, _ = _state_with_truths(model, sample)
    p = model.prompts
    ids = torch.tensor([p.encode([("Find all the objects.", None)], add_generation_prompt=True).input_ids])
    forced = p.assistant("<p>the objects</p><loc><loc><loc>") + [p.eos_id]
    decoder = answer_decoder(model, state, frame)
    assert isinstance(decoder, PointerDecoder)
    gen = generate(model, state, ids, None, 20, 5, forced=forced, decoder=decoder)
    for _ in gen:
        pass
    got = decoder.decoded
    assert len(got) == 3 and got[2] is None
    truths = list(sample.masks)
    matched = match_proposals([g.mask for g in got[:2]], truths)
    assert sorted(matched) == [0, 1]  # each object once
    assert all(mask_iou(g.mask, truths[i]) > 0.7 for i, g in zip(matched, got[:2]))
    assert all(0 < g.score <= 1 for g in got[:2])


@pytest.mark.parametrize("bias, grounded", [(10.0, 2), (-10.0, 0)])
def test_the_match_gate_keeps_the_pointer_to_objects_the_turn_asks_for(tiny_tokenizer, bias, grounded):
    """objects.match_gate: with every object read as asked for the gate changes nothing; with none,
    no <loc> grounds anything."""
    from perception.data.shapesref import make_sample
    from perception.decoding import answer_decoder
    from perception.generation import generate

    model = _objects_model(tiny_tokenizer)
    model.config.objects.match_gate = 0.5
    seen = []
    def constant(decision, object_states):
        seen.append(decision)
        return torch.full(object_states.shape[:2], bias)
    model.object_tokens.match.forward = constant
    sample = make_sample(11, tasks=["ground_A"], n_objects=2)
    frame, state, _ = _state_with_truths(model, sample)
    p = model.prompts
    ids = torch.tensor([p.encode([("Find all the objects.", None)], add_generation_prompt=True).input_ids])
    decoder = answer_decoder(model, state, frame)
    for _ in generate(model, state, ids, None, 20, 5, forced=p.assistant("<p>the objects</p><loc><loc>") + [p.eos_id],
                      decoder=decoder):
        pass
    assert len(decoder.decoded) == 2 and sum(g is not None for g in decoder.decoded) == grounded
    assert len(seen) == 1 and seen[0].shape[0] == 1  # one decision state: the prompt's last
    first = decoder.banned_first()  # nothing asked for: the answer may not start by grounding
    assert first == ([] if grounded else [p.special["<p>"], p.loc_id])


def test_generation_never_starts_with_a_token_the_decoder_rules_out(objects_model):
    from perception.generation import _Row

    p = objects_model.prompts
    decoder = type("D", (), {"banned_next": lambda self, answer, logits: [] if answer else [p.special["<p>"], p.loc_id]})()
    row = _Row(objects_model, [1, 2, 3], decoder, 10, 5)
    logits = torch.zeros(len(objects_model.tokenizer))
    logits[p.special["<p>"]], logits[p.loc_id], logits[7] = 9.0, 8.0, 1.0
    assert row.choose(logits) == 7
    row.write(7, None)
    assert row.choose(logits) == p.special["<p>"]  # only the first token


def test_the_decision_state_is_the_last_prompt_position_of_each_turn(objects_model):
    """decision_positions: in training, the position before each turn's first answer token -- the
    same token the generation prompt ends with, whose state starts the answer at inference."""
    from perception.objects import decision_positions

    p = objects_model.prompts
    turns = [("Find the red circle.", "<p>the red circle</p><loc>"), ("How many stars are there?", "There are no stars: 0 in total")]
    enc = p.encode(turns)
    ids, labels = torch.tensor([enc.input_ids]), torch.tensor([enc.labels])
    pos = decision_positions(ids == p.object_id, labels, objects_model.config.objects.max_objects)
    assert len(pos) == 2
    for i, t in enumerate(pos.tolist()):
        assert labels[0, t] == IGNORE and labels[0, t + 1] != IGNORE
        gen = p.encode(turns[:i] + [(turns[i][0], None)], add_generation_prompt=True).input_ids
        assert enc.input_ids[: t + 1] == gen  # the prompt generation would see ends exactly there


def test_matching_and_recall():
    a = np.zeros((10, 10), bool)
    a[:5, :5] = True
    b = np.zeros((10, 10), bool)
    b[5:, 5:] = True
    half = np.zeros((10, 10), bool)
    half[:5, :2] = True
    assert match_proposals([b, a], [a, b]) == [1, 0]
    assert match_proposals([half], [a]) == [None]  # IoU 0.4 < 0.5
    recall, ious = proposal_recall([a, half], [a, b])
    assert recall == 0.5 and ious == [1.0]


def test_proposal_quality_reports_recall_and_matched_miou(objects_model, monkeypatch):
    """Proposals that are the ground truth (through the model frame and back) give recall 1 and a
    high matched mIoU; no proposals give recall 0."""
    from perception.data.shapesref import make_sample
    from perception.objects import proposal_quality

    sample = make_sample(5, tasks=["ground_A"], n_objects=3)
    _, truth_state, _ = _state_with_truths(objects_model, sample)
    ot = objects_model.object_tokens
    monkeypatch.setattr(ot, "propose", lambda *a: truth_state.objects)
    q = proposal_quality(objects_model, [sample])
    assert q["objects"] == 3 and q["recall"] == 1.0 and q["matched_miou"] > 0.8 and q["proposals_per_image"] == 3
    none = dataclasses.replace(truth_state.objects, valid=torch.zeros_like(truth_state.objects.valid))
    monkeypatch.setattr(ot, "propose", lambda *a: none)
    assert proposal_quality(objects_model, [sample])["recall"] == 0.0


def test_two_peaks_on_one_object_are_one_proposal():
    from perception.objects import _duplicates

    a = torch.zeros(4, 4)
    a[:2, :2] = 1
    almost_a = a.clone()
    almost_a[2, 0] = 1  # IoU 0.8 with a
    b = torch.zeros(4, 4)
    b[2:, 2:] = 1
    fg = torch.stack([a, almost_a, b, a]).flatten(1)
    # rows 0-2 are one image (best first), row 3 another image: a copy of a there is no duplicate
    assert _duplicates(fg, torch.tensor([0, 0, 0, 1]), 0.7).tolist() == [False, True, False, False]


def test_save_load_round_trip_keeps_the_object_parts(objects_model, tmp_path, scene):
    from perception.checkpoint import from_pretrained, save_pretrained

    model = objects_model
    save_pretrained(model, tmp_path / "ckpt")
    back = from_pretrained(tmp_path / "ckpt")
    assert back.config.objects == model.config.objects and back.config.preset == "tiny-objects"
    assert back.prompts.object_id == model.prompts.object_id
    sd, sd2 = model.state_dict(), back.state_dict()
    names = [k for k in sd if k.startswith("object_tokens.")]
    assert {"object_tokens.position.weight", "object_tokens.empty", "object_tokens.query.weight",
            "object_tokens.proposal_head.net.0.weight", "object_tokens.match.query.weight"} <= set(names)
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    _, s1, _ = _state_with_truths(model, scene)
    _, s2, _ = _state_with_truths(back, scene)
    assert torch.equal(s1.objects.embeds, s2.objects.embeds)


def test_tiny_llava_with_object_tokens_trains_and_chats(tiny_tokenizer, scene):
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample
    from perception.pipeline import Pipeline

    model = _objects_model(tiny_tokenizer, "tiny-llava")
    assert model.prompts.n_object == 8
    col = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, seed=0)
    batch = col([make_sample(s, n_requests=2) for s in range(2)])
    model.train()
    out = model(batch)
    assert {"pointer", "proposal"} <= set(out) and torch.isfinite(out["loss"])
    out["loss"].backward()
    model.eval()
    answer = Pipeline(model).chat(scene.image, "Find the red circle.")
    again = Pipeline(model).chat(scene.image, "And the blue one?", history=answer.history)
    assert isinstance(again.text, str)


def test_the_v2_recipe_trains_tiny_objects_on_v1_and_v2_warm_starting_the_perception_parts_only():
    from pathlib import Path

    from perception.config import DataConfig
    from perception.train import load_train_config

    tc = load_train_config(str(Path(__file__).resolve().parent.parent / "configs" / "tiny_shapesref_v2.yaml"), [])
    assert tc.model == "tiny-objects" and tc.init_from == "runs/tiny-stage3"
    assert {"backbone.llm", "backbone.projector", "box_head"} <= set(tc.init_skip)  # the LM side starts fresh
    assert tc.freeze == ["backbone.stem", "mask_head"]  # the stage-3 click path makes the proposals
    assert tc.data.tasks == DataConfig().tasks and len(tc.data.weights) == len(tc.data.tasks)
    v2 = [w for t, w in zip(tc.data.tasks, tc.data.weights) if t in ("ground_none", "ground_all_none", "count_none")]
    assert sum(v2) > 0.1  # the no-target requests get more than DataConfig's default share
    assert tc.data.clicks_per_image == 0  # the frozen mask head: the click auxiliary would train nothing
    assert tc.warmup < tc.steps
    assert tc.data.same_target == 0.9  # same-as-a-region requests with a target more often (training only)
    import json

    shipped = json.loads((Path(__file__).resolve().parent.parent / "checkpoints" / "tiny" / "config.json").read_text())["objects"]
    recipe = tc.model_overrides["objects"]
    assert {k: shipped[k] for k in recipe} == recipe  # the recipe's settings are the shipped model's
    assert recipe["region_relation"] and recipe["region_overlap"]  # "the same object" by place too (docs/RESULTS.md, stop 28)


def test_image_tokens_after_the_question(objects_model):
    """image_position after_question: the first turn's image tokens follow its user text (and come
    before its object tokens); later turns are unchanged; the default keeps LLaVA's layout."""
    from perception.prompting import PromptEncoder, image_after_question

    tok = objects_model.tokenizer  # holds <obj>
    p = PromptEncoder(tok, 4, 2, image_after_question=True)
    ids = p.encode([("Find the red circle.", "<p>it</p><loc>"), ("And the blue one?", None)], add_generation_prompt=True).input_ids
    first_image, first_obj = ids.index(p.image_id), ids.index(p.object_id)
    question = p.text("Find the red circle.")
    assert ids[first_image - len(question) - 1:first_image - 1] == question  # question, newline, images
    assert ids.count(p.image_id) == 4 and first_image < first_obj
    assert ids.count(p.object_id) == 4  # two turns of two
    before = PromptEncoder(tok, 4, 2).encode([("Find the red circle.", None)], add_generation_prompt=True).input_ids
    assert before.index(p.image_id) == len(p.bos) + len(p.text("USER: "))
    cfg = get_preset("tiny")
    assert not image_after_question(cfg)
    cfg.image_position = "middle"
    with pytest.raises(ValueError, match="image_position"):
        image_after_question(cfg)


def test_pipeline_proposals_and_given_object_masks(objects_model, tiny_model, scene):
    """Pipeline.proposals lists the model's proposals as pixel masks; use_objects replaces them
    (oracle proposals) and the answer decoder then chooses among those; bad input is named."""
    from perception.decoding import ObjectDecoder, PointerDecoder, answer_decoder
    from perception.geometry import mask_iou
    from perception.pipeline import Pipeline

    pipe = Pipeline(objects_model)
    assert all(m.shape == scene.masks[0].shape and m.dtype == bool for m in pipe.proposals(scene.image))
    pipe.use_objects(scene.image, list(scene.masks))
    got = pipe.proposals(scene.image)
    assert len(got) == len(scene.masks) and all(mask_iou(g, t) > 0.8 for g, t in zip(got, scene.masks))
    W, H = scene.image.size
    with pytest.raises(ValueError, match="at most objects.max_objects"):
        pipe.use_objects(scene.image, [scene.masks[0]] * 9)
    with pytest.raises(ValueError, match="object mask 1 is 3x2"):
        pipe.use_objects(scene.image, [np.zeros((2, 3), bool)])
    with pytest.raises(ValueError, match="no object tokens"):
        Pipeline(tiny_model).proposals(scene.image)
    _, (frame, state) = pipe._prepare(scene.image)
    assert isinstance(answer_decoder(objects_model, state, frame), PointerDecoder)
    objects_model.config.objects.selection = "mask"  # the ablation without the pointer
    try:
        assert type(answer_decoder(objects_model, state, frame)) is ObjectDecoder
    finally:
        objects_model.config.objects.selection = "pointer"


def test_evaluator_reports_proposals_scene_sizes_and_runs_with_oracle_proposals(objects_model, tiny_model):
    from perception.evaluate import evaluate, format_table, shapesref_items
    from perception.limits import Limits
    from perception.pipeline import Pipeline

    pipe = Pipeline(objects_model, limits=Limits(max_new_tokens=4))
    rep = evaluate(pipe, shapesref_items(10_000_000, 2, 1), progress=False)
    p = rep["proposals"]
    assert p["images"] == 2 and p["objects"] > 0 and 0 <= p["recall@0.5"] <= 1
    assert sum(g["n"] for g in rep["grounding_by_objects"].values()) == rep["grounding"]["overall"]["n"]
    assert "proposals: recall@0.5" in format_table(rep) and "scenes of" in format_table(rep)
    oracle = evaluate(pipe, shapesref_items(10_000_000, 2, 1), progress=False, proposals="oracle")
    assert "proposals" not in oracle and oracle["grounding"]["overall"]["n"] == rep["grounding"]["overall"]["n"]
    with pytest.raises(ValueError, match="one request at a time"):
        evaluate(pipe, shapesref_items(10_000_000, 1), progress=False, proposals="oracle", batch_size=2)
    with pytest.raises(ValueError, match="object-token model"):
        evaluate(Pipeline(tiny_model), shapesref_items(10_000_000, 1), progress=False, proposals="oracle")


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_points_to_pixels_inverts_points_to_model(mode):
    """ImageFrame.points_to_pixels: every pixel's centre in the model frame comes back to that
    pixel; points off the image clip to its edge."""
    from perception.geometry import ImageFrame

    frame = ImageFrame(37, 23, 160, mode)
    ys, xs = np.mgrid[0:23, 0:37]
    px = np.stack([xs.ravel(), ys.ravel()], -1)
    assert np.array_equal(frame.points_to_pixels(frame.points_to_model(px)), px)
    assert frame.points_to_pixels(np.array([[-0.5, 2.0]])).tolist() == [[0, 22]]


def test_mask_at_click_keeps_the_clicked_component():
    """mask_at_click: the component of prob >= threshold holding the click; a click on background
    gets the blob around the most confident pixel."""
    from perception.geometry import mask_at_click

    prob = np.zeros((10, 12))
    prob[1:4, 1:4] = 0.9
    prob[6:9, 7:11] = 0.7
    left = mask_at_click(prob, 2, 2)
    assert left.sum() == 9 and left[1:4, 1:4].all()
    right = mask_at_click(prob, 8, 7)
    assert right.sum() == 12 and right[6:9, 7:11].all()
    assert np.array_equal(mask_at_click(prob, 0, 9), left)  # background: the most confident blob
    assert mask_at_click(prob, 8, 7, threshold=0.8).sum() == 9  # below the threshold


def test_a_proposal_keeps_only_the_blob_at_its_click():
    """components_at: the 8-connected component of each mask that holds its point; a point on
    background takes a component within a pixel of it; a point far from any keeps the mask."""
    from perception.geometry import components_at

    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[:, 1:3, 1:3] = True  # blob A
    m[:, 5:7, 4:8] = True  # blob B (a stray blob for a click on A)
    m[:, 3, 3] = True  # touches A diagonally: part of A
    pts = torch.tensor([[1.5 / 8, 1.5 / 8], [6.5 / 8, 5.5 / 8], [0.5 / 8, 7.5 / 8]])
    out = components_at(m, pts)
    a = torch.zeros(8, 8, dtype=torch.bool)
    a[1:3, 1:3] = True
    a[3, 3] = True
    assert torch.equal(out[0], a)
    assert torch.equal(out[1], m[1] & ~a)
    assert torch.equal(out[2], m[2])  # its point (0, 7) is on background, far from both: unchanged


def _listing_decoder(model, match_bias, text="Find all the objects."):
    """A PointerDecoder over two ground-truth proposals whose match scores are all ``match_bias``
    (a ``<region1>`` in ``text`` is a zero region embedding)."""
    from perception.data.shapesref import make_sample
    from perception.decoding import answer_decoder
    from perception.regions import RegionEmbeds

    sample = make_sample(11, tasks=["ground_A"], n_objects=2)
    frame, state, _ = _state_with_truths(model, sample)
    p = model.prompts
    ids = torch.tensor([p.encode([(text, None)], add_generation_prompt=True).input_ids])
    model.object_tokens.match.forward = lambda decision, object_states: torch.full(object_states.shape[:2], match_bias)
    decoder = answer_decoder(model, state, frame)
    R = int((ids == p.region_id).sum())
    regions = RegionEmbeds(torch.zeros(R, model.backbone.hidden_size), torch.zeros(R, 4)) if R else None
    with torch.no_grad():
        emb = model.embed(ids, state, regions)
        _, hidden, _ = model.backbone.forward_embeds(emb)
    decoder.see_prompt(ids[0], hidden[0], regions)
    return decoder, p


@pytest.mark.parametrize("bias, p_end, banned", [(10.0, 0.5, True), (-10.0, 0.5, False), (10.0, 0.999, False)])
def test_the_list_gate_keeps_a_listing_going_while_asked_objects_are_left(tiny_tokenizer, bias, p_end, banned):
    """objects.list_gate: right after a <loc>, ending (</s>, ":" or ".") is ruled out while an asked
    object is left ungrounded -- unless the LM is sure the answer is complete (list_doubt)."""
    model = _objects_model(tiny_tokenizer)
    model.config.objects.list_gate, model.config.objects.list_doubt = 0.5, 0.1
    decoder, p = _listing_decoder(model, bias)
    decoder._chosen[0] = True  # one object grounded, the other left
    ends = decoder._list_ends
    assert p.eos_id in ends and len(ends) == 3
    logits = torch.full((len(model.tokenizer),), -30.0)
    logits[p.eos_id] = float(np.log(p_end))
    logits[7] = float(np.log(1 - p_end))
    assert decoder.banned_next([p.loc_id], logits) == (ends if banned else [])
    assert decoder.banned_next([7], logits) == []  # only right after a <loc>
    decoder._chosen[1] = True  # nothing left: the answer may end
    assert decoder.banned_next([p.loc_id], logits) == []
    model.config.objects.list_gate = 0.0
    decoder._chosen[1] = False
    assert decoder.banned_next([p.loc_id], logits) == []  # off


@pytest.mark.parametrize("list_sure, p_end, banned", [(0.9, 0.999, True), (0.0, 0.999, False), (0.99999, 0.999, False)])
def test_list_sure_keeps_a_listing_going_whatever_the_lm_gives(tiny_tokenizer, list_sure, p_end, banned):
    """objects.list_sure: right after a <loc>, ending is ruled out while an object not grounded yet
    scores at least list_sure -- even where the LM is sure the answer is complete (list_doubt)."""
    model = _objects_model(tiny_tokenizer)
    oc = model.config.objects
    oc.list_gate, oc.list_doubt, oc.list_sure = 0.5, 0.1, list_sure
    decoder, p = _listing_decoder(model, 4.0)  # every object scores sigmoid(4) = 0.982
    decoder._chosen[0] = True
    logits = torch.full((len(model.tokenizer),), -30.0)
    logits[p.eos_id], logits[7] = float(np.log(p_end)), float(np.log(1 - p_end))
    assert decoder.banned_next([p.loc_id], logits) == (decoder._list_ends if banned else [])
    decoder._chosen[1] = True  # nothing left
    assert decoder.banned_next([p.loc_id], logits) == []


@pytest.mark.parametrize("list_stop", [True, False])
def test_list_stop_ends_a_listing_with_nothing_left_to_ground(tiny_tokenizer, list_stop):
    """objects.list_stop: right after a <loc>, when every proposal a <loc> may choose is grounded
    (or ruled out by the match gate), the answer may only end -- whatever the LM gives going on;
    while one is left, nothing changes."""
    model = _objects_model(tiny_tokenizer)
    oc = model.config.objects
    oc.match_gate, oc.list_gate, oc.list_stop = 0.5, 0.0, list_stop
    decoder, p = _listing_decoder(model, 4.0)  # both proposals asked for
    logits = torch.full((len(model.tokenizer),), -30.0)
    logits[7] = 0.0  # the LM goes on
    decoder._chosen[0] = True
    assert decoder.banned_next([p.loc_id], logits) == []  # one is left
    decoder._chosen[1] = True  # nothing left
    banned = decoder.banned_next([p.loc_id], logits)
    if list_stop:
        assert set(range(len(model.tokenizer))) - set(banned) == set(decoder._list_ends)
    else:
        assert banned == []
    assert decoder.banned_next([7], logits) == []  # only right after a <loc>


@pytest.mark.parametrize("sure_gate, p_ground, may_ground", [(0.95, 0.99, True), (0.95, 0.9, False), (0.0, 0.99, False)])
def test_the_sure_gate_lets_a_sure_lm_ground_where_the_match_gate_rules_out_everything(tiny_tokenizer, sure_gate, p_ground,
                                                                                       may_ground):
    """objects.sure_gate: every object scores below match_gate; an LM that gives starting by
    grounding at least sure_gate may still ground, and its <loc> then chooses among every proposal
    (the pointer); an LM less sure, or the option off, leaves "there is none"."""
    model = _objects_model(tiny_tokenizer)
    oc = model.config.objects
    oc.match_gate, oc.sure_gate, oc.start_gate = 0.5, sure_gate, 0.0
    decoder, p = _listing_decoder(model, -3.0)  # every object scores sigmoid(-3) = 0.047
    ground = [p.special["<p>"], p.loc_id]
    assert decoder.banned_first() == ground
    logits = torch.full((len(model.tokenizer),), -30.0)
    logits[p.special["<p>"]], logits[7] = float(np.log(p_ground)), float(np.log(1 - p_ground))
    assert decoder.banned_next([], logits) == ([] if may_ground else ground)
    assert bool(decoder._open().any()) == may_ground
    if may_ground:
        decoder(torch.zeros(1, model.backbone.hidden_size))
        assert decoder.decoded[-1] is not None


@pytest.mark.parametrize("region_sure_gate, may_ground", [(None, True), (0.0, False), (0.999, False), (0.95, True)])
def test_the_region_sure_gate_replaces_the_sure_gate_on_a_turn_that_names_a_region(tiny_tokenizer, region_sure_gate,
                                                                                    may_ground):
    """objects.region_sure_gate: on a turn naming <region1> it is the sure gate (None: sure_gate's
    0.95 applies; 0: the match gate's "there is none" stands whatever the LM gives); a turn naming
    no region keeps sure_gate."""
    model = _objects_model(tiny_tokenizer)
    oc = model.config.objects
    oc.match_gate, oc.sure_gate, oc.region_sure_gate, oc.start_gate = 0.5, 0.95, region_sure_gate, 0.0
    logits = torch.full((len(model.tokenizer),), -30.0)
    for text, expect in (("Find the object the same colour as <region1>.", may_ground), ("Find all the objects.", True)):
        decoder, p = _listing_decoder(model, -3.0, text)  # every object scores sigmoid(-3): the match gate rules all out
        ground = [p.special["<p>"], p.loc_id]
        logits[p.special["<p>"]], logits[7] = float(np.log(0.99)), float(np.log(0.01))
        assert decoder.banned_next([], logits) == ([] if expect else ground), text


def test_turn_names_region_looks_at_the_last_turn_only():
    """turn_names_region: a <region> id after the previous turn's object tokens (k per turn)."""
    from perception.objects import turn_names_region

    O, R, k = 9, 8, 2
    one_turn = torch.tensor([1, R, 2, O, O])
    assert turn_names_region(one_turn, O, R, k) and not turn_names_region(torch.tensor([1, 2, O, O]), O, R, k)
    assert not turn_names_region(torch.tensor([1, R, 2, O, O, 5, 6, 1, 2, O, O]), O, R, k)  # the region was the first turn's
    assert turn_names_region(torch.tensor([1, 2, O, O, 5, 6, 1, R, O, O]), O, R, k)


def test_own_proposals_are_segmented_in_pixels_as_clicks_are(objects_model):
    """ObjectSet.pixel_mask of the model's own proposals: the click's logits upsampled to the image,
    the component at the click (mask_at_click, as Pipeline.segment_point segments a click); given masks (the oracle's) keep their model-frame mask."""
    from perception.data.shapesref import draw_scene
    from perception.geometry import ImageFrame, mask_at_click

    model = objects_model
    scene = draw_scene(np.random.default_rng(5))
    frame = ImageFrame(*scene.image.size, model.config.backbone.image_size, model.config.backbone.resize_mode)
    state = model.encode_images(model.backbone.preprocess(scene.image)[None], propose=False)
    ot = model.object_tokens
    masks, valid, scores, logits, points = ot.proposal_masks(model.mask_head, state.mask, clicks=True)
    objs = ot.propose(model.mask_head, model.region_encoder, state.mask)
    assert torch.equal(objs.valid, valid) and objs.logits.shape == masks.shape and objs.points.shape == (1, ot.k, 2)
    thr = model.config.mask_head.mask_threshold
    for j in valid[0].nonzero().flatten().tolist():
        x, y = frame.points_to_pixels(points[0, j].numpy())
        assert 0 <= x < scene.image.size[0] and 0 <= y < scene.image.size[1]
        got = objs.pixel_mask(0, j, frame, thr)
        assert got.shape == (scene.image.size[1], scene.image.size[0])
        prob = frame.logits_to_pixels(logits[0, j][None])[0].sigmoid().numpy()
        assert np.array_equal(got, mask_at_click(prob, int(x), int(y), thr))
    given = ot.from_pixel_masks(model.region_encoder, state.mask, [o.mask for o in scene.objects], frame)
    assert given.logits is None and given.pixel_mask(0, 0, frame).shape == scene.objects[0].mask.shape


def test_history_answers_feed_their_objects_back(tiny_tokenizer, scene):
    """loc_feedback_history: an answer's history message carries what each <loc> grounded; the
    next turn's prompt feeds those objects back into the history's <loc>s (as training does);
    without the setting, or when the objects do not fit the answer's <loc>s, nothing is fed."""
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample
    from perception.limits import Limits
    from perception.pipeline import Pipeline

    model = _objects_model(tiny_tokenizer)
    model.config.loc_feedback_history = True
    pipe = Pipeline(model, limits=Limits(max_new_tokens=6))
    p = model.prompts
    first = pipe.chat(scene.image, "Find the red circle.")
    forged = {"role": "assistant", "content": "<p>the red circle</p><loc>, <p>the blue square</p><loc>",
              "objects": [{"box": [10, 10, 60, 60]}, None]}
    history = first.history[:-1] + [forged]
    turn = pipe._prepare_turn(scene.image, "Describe it.", history, None, None)
    is_fed, fb = turn.loc_feedback
    assert is_fed.tolist() == [True, False] and fb.shape == (1, model.backbone.hidden_size)
    emb = model.embed(turn.input_ids, turn.state, None, turn.loc_feedback)
    plain = model.embed(turn.input_ids, turn.state)
    loc = (turn.input_ids[0] == p.loc_id).nonzero().flatten()
    changed = (emb - plain).abs().sum(-1)[0]
    assert changed[loc[0]] > 0 and changed[loc[1]] == 0 and int((changed > 0).sum()) == 1
    again = pipe.chat(scene.image, "Describe it.", history=history)  # generates with it
    assert again.history[-3] == forged
    for bad in ([{"box": [10, 10, 60, 60]}], [{"mask": {"size": [5000, 5000], "counts": "0"}}, None], "x"):
        broken = history[:-1] + [dict(forged, objects=bad)]
        assert pipe._prepare_turn(scene.image, "Describe it.", broken, None, None).loc_feedback is None
    model.config.loc_feedback_history = False
    assert pipe._prepare_turn(scene.image, "Describe it.", history, None, None).loc_feedback is None
    # training feeds back the <loc>s of every turn with the setting, only the last answer's without
    sample = make_sample(3, tasks=["followup"])
    for on, want in ((True, True), (False, False)):
        model.config.loc_feedback_history = on
        fed = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, seed=0)([sample])["loc_fed"]
        assert len(sample.turns) == 2 and fed.numel() >= 1 and bool(fed[0]) == want


def test_the_proposal_and_presence_probes_run_on_an_object_token_model(objects_model):
    """bench/proposal_errors.py and bench/presence_probe.py (docs/RESULTS.md cites both): their
    counts add up on a tiny random model."""
    import importlib.util
    from pathlib import Path

    from perception.pipeline import Pipeline

    def load(name):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    r = load("proposal_errors").measure(objects_model, 12_000_000, 2)
    assert r["objects"] == r["found"] + r["missed_with_peak"] + r["missed_without_peak"] > 0
    assert 0 <= r["false"] <= r["proposals"] and 0.0 <= r["recall"] <= 1.0
    assert objects_model.object_tokens.match is not None  # tiny-objects has match scores
    rep = load("presence_probe").probe(Pipeline(objects_model), 12_000_000, 1)
    assert "ground_none" in rep or "same_as_region-" in rep or "same_as_region+" in rep
    assert all(0.0 <= v["top_match"] <= 1.0 and 0.0 <= v["p_ground_first"] <= 1.0 for v in rep.values())


@pytest.mark.parametrize("overlap", [False, True])
def test_object_tokens_read_their_relation_to_the_turns_region(tiny_tokenizer, tmp_path, overlap):
    """objects.region_relation: the object tokens of a turn that names a region get relation(features)
    added -- the same object scores cosine 1 (with objects.region_overlap also box IoU 1, and the
    others their IoU with it, 0 apart) -- and the other turns' tokens and empty slots do not."""
    from perception.data.shapesref import make_sample
    from perception.geometry import pairwise_box_iou
    from perception.model import PerceptionModel
    from perception.regions import RegionEmbeds

    cfg = get_preset("tiny-objects")
    assert not cfg.objects.region_relation and not cfg.objects.region_overlap  # options: off in the preset, on in the recipe
    cfg.objects = dataclasses.replace(cfg.objects, region_relation=True, region_overlap=overlap)
    torch.manual_seed(0)
    model = PerceptionModel(cfg, tiny_tokenizer).eval()
    assert model.object_tokens.relation is not None
    sample = make_sample(11, tasks=["ground_A"], n_objects=3)
    n, K = len(sample.masks), model.config.objects.max_objects
    _, state, masks = _state_with_truths(model, sample)
    ot = model.object_tokens
    with torch.no_grad():
        enc = model.prompts.encode([("Find the objects with the same color as <region1>.", "no"), ("And the stars?", None)],
                                   add_generation_prompt=True)
        ids = torch.tensor([enc.input_ids])
        box = state.objects.boxes[0, 1:2]
        region = RegionEmbeds(model.region_encoder(box, masks[0, 1:2], state.mask.pixels), box)  # object 1's own region
        plain = model.embed(ids, state, region)
        is_obj = ids == model.prompts.object_id
        feats = ot._relation_features(ids, is_obj, model.prompts.region_id, region, state.objects, model.region_aux)
        torch.nn.init.normal_(ot.relation.weight)
        try:
            related = model.embed(ids, state, region)
        finally:
            torch.nn.init.zeros_(ot.relation.weight)
    G = len(model.config.token_aux.attributes)
    assert feats.shape == (2 * K, G + 2 + overlap)
    assert torch.allclose(feats[1, G], torch.tensor(1.0), atol=1e-5)  # cosine with the region's own object
    assert bool((feats[:n, G] < feats[1, G] + 1e-6).all()) and bool((feats[:n, :G] >= 0).all() & (feats[:n, :G] <= 1).all())
    assert (feats[n:K] == 0).all() and (feats[K:] == 0).all()  # empty slots; the turn without a region
    assert (feats[:n, -1] == 1).all()  # the "this turn has a region" column stays last
    if overlap:
        iou = feats[:n, G + 1]
        assert torch.allclose(iou, pairwise_box_iou(box, state.objects.boxes[0, :n])[0], atol=1e-6)
        assert torch.allclose(iou[1], torch.tensor(1.0)) and bool((iou[torch.arange(n) != 1] < 0.5).all())
    at = is_obj[0].nonzero().flatten()
    changed = (related[0, at] - plain[0, at]).abs().amax(-1) > 1e-6
    assert changed.tolist() == [True] * n + [False] * (K - n) + [False] * K
    import importlib.util
    from pathlib import Path

    from perception.pipeline import Pipeline

    spec = importlib.util.spec_from_file_location("presence_probe", Path(__file__).resolve().parent.parent / "bench" / "presence_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    sep = probe.relation_separation(Pipeline(model), 12_000_000, 2)  # bench/presence_probe.py's report for such models
    assert set(sep) == {"color", "shape"}
    assert all(r["targets"] + r["others"] >= 0 and (r["self_cos"] != r["self_cos"] or -1 <= r["self_cos"] <= 1) for r in sep.values())
    assert probe._pairwise_auc([0.9, 0.8], [0.1, 0.8]) == 0.875 and probe._pairwise_auc([], [1.0]) != probe._pairwise_auc([], [1.0])
    from perception.checkpoint import from_pretrained, save_pretrained

    torch.nn.init.normal_(ot.relation.weight)
    back = from_pretrained(save_pretrained(model, tmp_path / "m"))
    assert back.config.objects.region_relation and torch.equal(back.object_tokens.relation.weight, ot.relation.weight)


def test_object_attention_mask_opens_each_turns_object_block_only():
    from perception.objects import object_attention_mask

    O = 9  # the object id; two turns of K = 2 object tokens, one row left-padded by two (-1)
    ids = torch.tensor([[5, 6, O, O, 7, 8, O, O, 4],
                        [-1, -1, 5, O, O, 7, O, O, 4]])
    pad = (ids >= 0).long()
    m = object_attention_mask(ids, O, 2, pad)
    assert m.shape == (2, 1, 9, 9) and m.dtype == torch.bool
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    extra = m[0, 0] & ~causal  # row 0: only (2 -> 3) and (6 -> 7) look ahead
    assert extra.nonzero().tolist() == [[2, 3], [6, 7]]
    assert not (~m[0, 0] & causal).any()  # everything causal is kept (no padding in row 0)
    assert (m[1, 0] & ~causal).nonzero().tolist() == [[3, 4], [6, 7]]
    assert not m[1, 0, 2:, :2].any()  # no real token sees the padding
    assert m[1, 0, :2].tolist()[0][:2] == [True, False] and m[1, 0, 1, 1]  # a padded query sees itself only
    assert torch.equal(object_attention_mask(ids[:1], O, 2), m[:1])  # no padding mask: no padding


def test_bidirectional_object_tokens_see_later_ones_and_cached_steps_match_a_full_pass(tiny_tokenizer):
    """With objects.bidirectional the first object token's state depends on the last one's value
    (without it, not), text before the object tokens is untouched, and a cached decoding step after
    the prompt (run with the 4-D mask) gives the state a full pass over prompt + token gives."""
    from perception.data.shapesref import make_sample
    from perception.model import PerceptionModel

    sample = make_sample(7, tasks=["ground_A"], n_objects=4)
    for bidir in (False, True):
        cfg = get_preset("tiny-objects")
        cfg.objects = dataclasses.replace(cfg.objects, enabled=True, bidirectional=bidir)
        torch.manual_seed(0)
        model = PerceptionModel(cfg, tiny_tokenizer).eval()
        bb = model.backbone
        _, state, _ = _state_with_truths(model, sample)
        enc = model.prompts.encode([("Find the red circle.", "no"), ("And the blue one?", None)], add_generation_prompt=True)
        ids = torch.tensor([enc.input_ids])
        at = (ids[0] == model.prompts.object_id).nonzero().flatten()
        with torch.no_grad():
            emb = model.embed(ids, state)
            _, h0, past = bb.forward_embeds(emb, model.lm_attention(ids), use_cache=True)
            moved = emb.clone()
            moved[0, at[-1]] += 1.0  # the second turn's last object token
            h1 = bb.forward_embeds(moved, model.lm_attention(ids))[1]
            nxt = torch.tensor([[model.loc_id]])
            step = bb.forward_embeds(bb.embed_tokens(nxt), past_key_values=past, use_cache=True)[1]
            full = torch.cat([ids, nxt], 1)
            whole = bb.forward_embeds(model.embed(full, state), model.lm_attention(full))[1]
        K = cfg.objects.max_objects
        first = at[-K]  # the second turn's first object token
        assert (not torch.allclose(h0[0, first], h1[0, first], atol=1e-6)) == bidir
        assert torch.allclose(h0[0, :first], h1[0, :first])  # nothing before them sees them
        assert torch.allclose(whole[0, :-1], h0[0], atol=1e-5) and torch.allclose(whole[0, -1], step[0, -1], atol=1e-5)


def test_bidirectional_object_tokens_batch_as_one_at_a_time(tiny_tokenizer, scene):
    from perception.model import PerceptionModel
    from perception.pipeline import Pipeline

    cfg = get_preset("tiny-objects")
    cfg.objects = dataclasses.replace(cfg.objects, enabled=True, bidirectional=True)
    torch.manual_seed(0)
    pipe = Pipeline(PerceptionModel(cfg, tiny_tokenizer).eval())
    msgs = ["Find the red circle.", "Find all the objects with the same color as the largest object on the left."]
    one = [pipe.chat(scene.image, m, max_new_tokens=8).raw for m in msgs]
    both = [a.raw for a in pipe.chat_batch([scene.image] * 2, msgs, max_new_tokens=8)]
    assert both == one


def test_bidirectional_object_tokens_need_a_backbone_that_takes_a_4d_mask(tiny_tokenizer):
    from perception.model import PerceptionModel

    cfg = get_preset("tiny-qwen2vl")
    cfg.objects = dataclasses.replace(cfg.objects, enabled=True, bidirectional=True)
    with pytest.raises(ValueError, match="objects.bidirectional"):
        PerceptionModel(cfg, tiny_tokenizer)


def test_tiny_llava_with_bidirectional_object_tokens_trains_and_chats(tiny_tokenizer, scene):
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample
    from perception.model import PerceptionModel
    from perception.pipeline import Pipeline

    cfg = get_preset("tiny-llava")
    cfg.objects = dataclasses.replace(cfg.objects, enabled=True, bidirectional=True)
    torch.manual_seed(0)
    model = PerceptionModel(cfg, tiny_tokenizer)
    batch = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, seed=0)([make_sample(s, n_requests=2) for s in range(2)])
    assert model.lm_attention(batch["input_ids"], batch["attention_mask"]).shape[1:] == (1, *batch["input_ids"].shape[1:] * 2)
    out = model.train()(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    pipe = Pipeline(model.eval())
    msgs = ["Find the red circle.", "How many circles are there?"]
    assert [a.raw for a in pipe.chat_batch([scene.image] * 2, msgs, max_new_tokens=6)] == [pipe.chat(scene.image, m, max_new_tokens=6).raw for m in msgs]


@pytest.mark.parametrize("overlap", [False, True])
def test_relation_scores_read_the_region_relation_in_the_match_scores_and_the_pointer(tiny_tokenizer, scene, tmp_path, overlap):
    """objects.relation_scores: zero at the start (the scores are the plain ones), trained by the
    match and pointer losses on same-as-a-region samples, read at inference for the turn's regions,
    kept by save/load; and refused without objects.region_relation (as is objects.region_overlap).
    With region_overlap (the region given as object 0's mask) object 0's proposal reads box IoU near 1
    with the region, the other objects near 0."""
    from perception.checkpoint import from_pretrained, save_pretrained
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample
    from perception.model import PerceptionModel
    from perception.pipeline import Pipeline
    from perception.types import Region

    cfg = get_preset("tiny-objects")
    for opt in ("relation_scores", "region_overlap"):
        with pytest.raises(ValueError, match="region_relation"):
            PerceptionModel(dataclasses.replace(cfg, objects=dataclasses.replace(cfg.objects, **{opt: True})), tiny_tokenizer)
    cfg.objects = dataclasses.replace(cfg.objects, relation_scores=True, region_relation=True, region_overlap=overlap)
    torch.manual_seed(0)
    model = PerceptionModel(cfg, tiny_tokenizer)
    ot = model.object_tokens
    col = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, seed=0)
    batch = col([make_sample(s, tasks=["same_as_region"], n_requests=1) for s in range(4)])
    out = model.train()(batch)
    out["loss"].backward()
    grads = {k: float(lin.weight.grad.abs().sum()) for k, lin in ot.score_weights.items()}
    assert grads["match"] > 0  # the match loss reaches it (every same-as-a-region turn names a region)
    assert "pointer" not in out or grads["pointer"] > 0 or not bool((batch["loc_slots"] >= 0).any())
    model.eval()
    image = scene.image
    ys, xs = np.nonzero(scene.masks[0])
    region = Region(point=(int(xs[len(xs) // 2]), int(ys[len(ys) // 2])))
    if overlap:  # an untrained click path's mask is noise; a mask region is object 0 exactly
        region = Region(mask=scene.masks[0])
    seen = {}
    from perception.decoding import PointerDecoder

    real = PointerDecoder.see_prompt

    def spy(self, input_ids, hidden, region_embeds=None):
        real(self, input_ids, hidden, region_embeds)
        seen["relations"], seen["match"] = self._features, self._match

    PointerDecoder.see_prompt = spy
    try:
        pipe = Pipeline(model)
        pipe.use_objects(image, list(scene.masks[:3]))
        pipe.chat(image, "Find all the objects with the same color as <region1>.", regions=[region], max_new_tokens=4)
        zero_match = seen["match"].clone()
        G = len(cfg.token_aux.attributes)
        K, F = ot.k, G + 2 + overlap
        assert seen["relations"].shape == (K, F) and bool((seen["relations"][:3, -1] == 1).all())  # three objects, one region
        if overlap:  # the region is object 0, whose mask is slot 0
            iou = seen["relations"][:3, G + 1]
            assert float(iou[0]) > 0.9 and bool((iou[1:] < 0.3).all()), iou
        torch.nn.init.normal_(ot.score_weights["match"].weight)
        pipe.chat(image, "Find all the objects with the same color as <region1>.", regions=[region], max_new_tokens=4)
        assert not torch.allclose(seen["match"][:3], zero_match[:3])  # the features now move the scores
        pipe.chat(image, "Find the red circle.", max_new_tokens=4)
        assert not bool(seen["relations"].any())  # no region in the turn: nothing to read
    finally:
        PointerDecoder.see_prompt = real
    back = from_pretrained(save_pretrained(model, tmp_path / "m"))
    assert back.config.objects.relation_scores and back.config.objects.region_overlap == overlap
    assert torch.equal(back.object_tokens.score_weights["match"].weight, ot.score_weights["match"].weight)


def test_set_positions_are_centres_and_ranks_among_the_valid_objects():
    """set_positions: [2 cx - 1, 2 cy - 1, rank x, rank y], ranks scaled to [-1, 1] among the
    image's valid objects only; 0 rank for a lone object; zeros in empty slots."""
    from perception.objects import set_positions

    boxes = torch.tensor([[[0.6, 0.0, 0.8, 0.2], [0.0, 0.4, 0.2, 0.6], [0.3, 0.8, 0.5, 1.0], [0.0, 0.0, 0.1, 0.1]],
                          [[0.4, 0.4, 0.6, 0.6], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    p = set_positions(boxes, valid)
    assert p.shape == (2, 4, 4)
    assert torch.allclose(p[0, :3, :2], torch.tensor([[0.4, -0.8], [-0.8, 0.0], [-0.2, 0.8]]))
    assert torch.equal(p[0, :3, 2], torch.tensor([1.0, -1.0, 0.0]))  # x order: slot 1, slot 2, slot 0 (slot 3 not counted)
    assert torch.equal(p[0, :3, 3], torch.tensor([-1.0, 0.0, 1.0]))
    assert not bool(p[0, 3].any()) and not bool(p[1, 1:].any())
    assert torch.equal(p[1, 0], torch.tensor([0.0, 0.0, 0.0, 0.0]))  # one object: centre 0.5 -> 0, rank 0


def test_position_scores_read_each_objects_place_in_the_scores(tiny_tokenizer, scene, tmp_path):
    """objects.position_scores: zero at the start, trained by the match and pointer losses, read at
    inference in every turn (the proposals' set_positions), after the relation's features when both
    are on; kept by save/load."""
    from perception.checkpoint import from_pretrained, save_pretrained
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample
    from perception.decoding import PointerDecoder
    from perception.model import PerceptionModel
    from perception.objects import set_positions
    from perception.pipeline import Pipeline

    cfg = get_preset("tiny-objects")
    cfg.objects = dataclasses.replace(cfg.objects, position_scores=True)
    torch.manual_seed(0)
    model = PerceptionModel(cfg, tiny_tokenizer)
    ot = model.object_tokens
    assert ot.score_weights["pointer"].out_features == 4
    col = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, seed=0)
    batch = col([make_sample(s, tasks=["ground_S"], n_requests=1) for s in range(4)])
    out = model.train()(batch)
    out["loss"].backward()
    assert float(ot.score_weights["match"].weight.grad.abs().sum()) > 0
    assert float(ot.score_weights["pointer"].weight.grad.abs().sum()) > 0  # every superlative grounds one object
    model.eval()
    seen = {}
    real = PointerDecoder.see_prompt

    def spy(self, input_ids, hidden, region_embeds=None):
        real(self, input_ids, hidden, region_embeds)
        seen["features"], seen["match"], seen["objects"] = self._features, self._match, self.state.objects

    PointerDecoder.see_prompt = spy
    try:
        pipe = Pipeline(model)
        pipe.use_objects(scene.image, list(scene.masks[:3]))
        pipe.chat(scene.image, "Find the leftmost shape.", max_new_tokens=4)
        objs = seen["objects"]
        assert torch.allclose(seen["features"], set_positions(objs.boxes, objs.valid)[0])
        assert bool(seen["features"][:3].any()) and not bool(seen["features"][3:].any())
        zero_match = seen["match"].clone()
        torch.nn.init.normal_(ot.score_weights["match"].weight)
        pipe.chat(scene.image, "Find the leftmost shape.", max_new_tokens=4)
        assert not torch.allclose(seen["match"][:3], zero_match[:3])
    finally:
        PointerDecoder.see_prompt = real
    back = from_pretrained(save_pretrained(model, tmp_path / "m"))
    assert back.config.objects.position_scores
    assert torch.equal(back.object_tokens.score_weights["match"].weight, ot.score_weights["match"].weight)

    both = get_preset("tiny-objects")
    both.objects = dataclasses.replace(both.objects, position_scores=True, relation_scores=True, region_relation=True)
    m2 = PerceptionModel(both, tiny_tokenizer)
    G = len(both.token_aux.attributes)
    assert m2.object_tokens.score_weights["match"].out_features == G + 2 + 4
    feats = m2.object_score_features(batch["input_ids"], m2.object_tokens.from_masks(
        m2.region_encoder, m2.encode_images(batch["pixel_values"], batch.get("mask_pixel_values"), propose=False).mask, batch["object_masks"], batch["object_valid"]))
    is_obj = batch["input_ids"] == m2.prompts.object_id
    assert not bool(feats[is_obj][:, :G + 2].any())  # no region in these turns
    assert bool(feats[is_obj][:, G + 2:].any())


def test_the_superlative_probe_transposes_the_question_with_the_scene(objects_model):
    """bench/superlative_probe.py (docs/RESULTS.md cites it): a transposed request names the other
    axis and its referent is still that axis' extreme among the named objects; the categories of a
    run add up."""
    import importlib.util
    from pathlib import Path

    from perception.pipeline import Pipeline

    spec = importlib.util.spec_from_file_location("superlative_probe", Path(__file__).resolve().parent.parent / "bench" / "superlative_probe.py")
    sp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sp)
    seed = next(s for s in range(12_000_000, 12_000_050) if sp.scene_request(s, False) is not None)
    for transpose in (False, True):
        image, masks, text, word, ref, named = sp.scene_request(seed, transpose)
        assert word in text and len(named) >= 2 and ref in named and masks.shape[1:] == (image.size[1], image.size[0])
        axis = 0 if word in ("leftmost", "rightmost") else 1
        spans = [np.nonzero(masks[k])[1 - axis] for k in named]  # columns (x) or rows (y) of each named object
        centre = [(c.min() + c.max()) / 2 for c in spans]  # box centres, as the expressions use
        pick = int(np.argmin(centre)) if word in ("leftmost", "topmost") else int(np.argmax(centre))
        assert named[pick] == ref
    assert sp.scene_request(seed, True)[3] == sp.TRANSPOSED[sp.scene_request(seed, False)[3]]
    rep = sp.probe(Pipeline(objects_model), 12_000_000, 4)
    assert rep["overall"]["n"] == sum(rep[w]["n"] for w in sp.WORDS) > 0
    assert abs(sum(rep["overall"][c] for c in sp.CATEGORIES) - 1.0) < 1e-6


def test_the_gate_probe_records_every_turn_and_undoes_its_recording(objects_model):
    """bench/gate_probe.py (docs/RESULTS.md cites it): one row per chat turn with the decoder's
    match scores and the LM's probability of grounding; its counts add up; the pipeline's decoders
    are plain again afterwards."""
    import importlib.util
    from pathlib import Path

    from perception import decoding
    from perception.limits import Limits
    from perception.pipeline import Pipeline

    spec = importlib.util.spec_from_file_location("gate_probe", Path(__file__).resolve().parent.parent / "bench" / "gate_probe.py")
    gp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gp)
    before = decoding.answer_decoder
    rows = gp.collect(Pipeline(objects_model, limits=Limits(max_new_tokens=4)), 12_000_000, 1)
    assert decoding.answer_decoder is before
    assert len(rows) >= 6 and {r["kind"] for r in rows} <= {"target", "none", "other"}
    assert all(0 <= r["p_ground"] <= 1 and len(r["match"]) <= objects_model.config.objects.max_objects for r in rows)
    rep = gp.summarise(rows, 0.35, 0.9, 0.95)
    assert rep["turns"] == len(rows)
    assert rep["target_none"]["lm_sure_all_scores_under_gate"] <= rep["target_none"]["n"] == sum(rep["target_none"]["by_task"].values())
    assert rep["stopped_listings"]["ended_with_an_object_left_over"] <= rep["stopped_listings"]["n_listings"]


def test_the_same_region_probe_counts_add_up(objects_model):
    """bench/same_region_probe.py (docs/RESULTS.md cites it): six requests per scene (two
    attributes x three region kinds); found <= targets, right "none" answers <= requests."""
    import importlib.util
    from pathlib import Path

    from perception.limits import Limits
    from perception.pipeline import Pipeline

    spec = importlib.util.spec_from_file_location("same_region_probe", Path(__file__).resolve().parent.parent / "bench" / "same_region_probe.py")
    sp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sp)
    rep = sp.probe(Pipeline(objects_model, limits=Limits(max_new_tokens=4)), 12_500_000, 1)
    assert len(rep) == 6 and sum(s["targets"] > 0 or s["none_requests"] > 0 for s in rep.values()) == 6
    assert all(s["found"] <= s["targets"] and s["none_right"] <= s["none_requests"] and 0 <= s["recall"] <= 1 for s in rep.values())


def test_the_same_region_probe_places_every_target_in_one_category(objects_model):
    """bench/same_region_probe.py --misses: each target of a request with one is found, has no
    proposal, is under the match gate or was left out of the listing -- the counts add up; a drawn
    region (point, box, mask) leads back to the object it was drawn from."""
    import importlib.util
    from pathlib import Path

    from perception import decoding
    from perception.data.shapesref import REGION_KINDS, _region, draw_scene
    from perception.limits import Limits
    from perception.pipeline import Pipeline

    spec = importlib.util.spec_from_file_location("same_region_probe", Path(__file__).resolve().parent.parent / "bench" / "same_region_probe.py")
    sp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sp)
    rng = np.random.default_rng(3)
    scene = draw_scene(rng)
    for i, o in enumerate(scene.objects):
        for kind in REGION_KINDS:
            assert sp.region_object(scene, _region(rng, o, kind)) == i, kind
    before = decoding.answer_decoder
    rep = sp.misses(Pipeline(objects_model, limits=Limits(max_new_tokens=4)), 12_500_000, 3)
    assert decoding.answer_decoder is before
    assert set(rep["by"]) == set(sp.LOST) and sum(r["n"] for r in rep["by"].values()) == rep["targets"] > 0
    assert abs(sum(r["share"] for r in rep["by"].values()) - 1) < 1e-9

