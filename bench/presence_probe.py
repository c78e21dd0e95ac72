"""What decides whether an object-token model's answer grounds anything (issue 14).

For each request kind, on ``--count`` validation scenes (seeds from ``--seed``; keep them away from
the evaluation seeds), through the pipeline with the model's own proposals: the highest match
probability among the proposals (``objects.match_gate`` / ``start_gate`` read it) and the LM's
probability that the answer starts by grounding (``<p>`` or ``<loc>`` as its first token). Same-as-a-
region requests are split into those with a target (+) and those without (-).
For a model with the region relation (``objects.region_relation``), also how well its features
separate the objects a same-as-a-region request asks for from the others (``relation_separation``).

    python bench/presence_probe.py checkpoints/tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KINDS = ["ground_A", "ground_S", "ground_R", "ground_all", "count", "region_what", "region_describe"]


@torch.no_grad()
def probe(pipe, seed: int, count: int) -> dict:
    from perception.data import shapesref_v2 as v2
    from perception.data.shapesref import draw_scene, make_turn
    from perception.tokens import PHRASE_OPEN

    model, p = pipe.model, pipe.model.prompts
    first = [p.special[PHRASE_OPEN], p.loc_id]
    out = {}
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        scene = draw_scene(rng)
        turns = [t for t in (make_turn(scene, rng, k) for k in KINDS) if t is not None]
        turns += [v2.make_v2_turn(scene, rng, "ground_none"), v2.same_as_region(scene, rng)]
        for t in turns:
            if t is None:
                continue
            turn = pipe._prepare_turn(scene.image, t.user, None, list(t.regions or []), None)
            emb = model.embed(turn.input_ids, turn.state, turn.region_embeds)
            logits, hidden, _ = model.backbone.forward_embeds(emb, model.lm_attention(turn.input_ids))
            turn.decoder.see_prompt(turn.input_ids[0], hidden[0], turn.region_embeds)
            valid = turn.state.objects.valid[0]
            top = float(turn.decoder._match[valid].max()) if bool(valid.any()) else 0.0
            ground = float(logits[0, -1].float().softmax(-1)[first].sum())
            kind = t.task + ("+" if t.targets else "-") if t.task == "same_as_region" else t.task
            out.setdefault(kind, []).append((top, ground))
    return {k: {"n": len(v), "top_match": float(np.mean([a for a, _ in v])),
                "top_match_over_0.5": float(np.mean([a >= 0.5 for a, _ in v])),
                "p_ground_first": float(np.mean([b for _, b in v]))} for k, v in out.items()}


def _pairwise_auc(pos: list, neg: list) -> float:
    """P(a random positive scores above a random negative), ties counting half; nan when a side is empty."""
    if not pos or not neg:
        return float("nan")
    a, b = np.asarray(pos)[:, None], np.asarray(neg)[None]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def _owner(scene, region) -> int:
    """The index of the object a ShapesRef region was drawn from (point: the visible mask under it)."""
    if region.point is not None:
        x, y = region.point
        return next(k for k, o in enumerate(scene.objects) if o.mask[int(y), int(x)])
    if region.box is not None:
        return next(k for k, o in enumerate(scene.objects) if tuple(o.box) == tuple(region.box))
    return next(k for k, o in enumerate(scene.objects) if np.array_equal(o.mask, region.mask))


@torch.no_grad()
def relation_separation(pipe, seed: int, count: int) -> dict:
    """Same-as-a-region requests on ``count`` validation scenes: how well the region relation's
    features (``ObjectTokens.region_relations``, before its learned Linear) tell the objects asked
    for from the rest. Per attribute asked ("color", "shape"): ``auc_same``, the pairwise AUC of
    the same-word probability of the asked group, targets against the other objects that are not
    the region's own; ``self_cos`` / ``other_cos``, the mean cosine of the region's own object and
    of the others; and the counts. Objects are the model's proposals matched to the scene's
    objects (mask IoU >= 0.5); an object without a proposal is left out."""
    from perception.data import shapesref_v2 as v2
    from perception.data.shapesref import draw_scene
    from perception.objects import match_proposals

    model, p = pipe.model, pipe.model.prompts
    groups = model.config.token_aux.attributes
    acc = {a: {"pos": [], "neg": [], "self": [], "other": []} for a in v2.SAME_ATTRIBUTES}
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        scene = draw_scene(rng)
        for attr in v2.SAME_ATTRIBUTES:
            t = v2.same_as_region(scene, rng, attribute=attr)
            turn = pipe._prepare_turn(scene.image, t.user, None, list(t.regions), None)
            objs = turn.state.objects
            is_obj = turn.input_ids == p.object_id
            f = model.object_tokens._relation_features(turn.input_ids, is_obj, p.region_id, turn.region_embeds, objs,
                                                       getattr(model, "region_aux", None))  # (K, relation_feature_count), one turn
            slots = objs.valid[0].nonzero().flatten().tolist()
            props = [objs.pixel_mask(0, j, turn.decoder.frame, model.config.mask_head.mask_threshold) for j in slots]
            match = match_proposals(props, [o.mask for o in scene.objects])
            own = _owner(scene, t.regions[0])
            g = next(k for k, words in enumerate(groups) if getattr(scene.objects[own], attr) in words)
            for k, j in enumerate(match):
                if j is None:
                    continue
                row = f[slots[j]]
                a = acc[attr]
                (a["self"] if k == own else a["other"]).append(float(row[len(groups)]))
                if k != own:
                    (a["pos"] if k in t.targets else a["neg"]).append(float(row[g]))
    return {a: {"auc_same": _pairwise_auc(v["pos"], v["neg"]), "targets": len(v["pos"]), "others": len(v["neg"]),
                "self_cos": float(np.mean(v["self"])) if v["self"] else float("nan"),
                "other_cos": float(np.mean(v["other"])) if v["other"] else float("nan")} for a, v in acc.items()}


def main(argv=None) -> int:
    import perception

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an object-token checkpoint folder (or 'tiny')")
    ap.add_argument("--seed", type=int, default=12_000_000)
    ap.add_argument("--count", type=int, default=40)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pipe = perception.load_pipeline(args.model, device="cpu")
    if getattr(pipe.model, "object_tokens", None) is None or pipe.model.object_tokens.match is None:
        print("error: the model has no match scores (objects.enabled and loss.match > 0)", file=sys.stderr)
        return 2
    for kind, r in probe(pipe, args.seed, args.count).items():
        print(f"{kind:18s} n={r['n']:3d}  top match {r['top_match']:.2f} (>= 0.5: {r['top_match_over_0.5']:.2f})  "
              f"P(answer starts grounding) {r['p_ground_first']:.3f}")
    if pipe.model.object_tokens.relation is not None:
        print("region relation's features on same-as-a-region requests (objects matched to proposals):")
        for attr, r in relation_separation(pipe, args.seed, args.count).items():
            print(f"  same {attr:5s}: AUC of the same-word probability, targets ({r['targets']}) vs the other objects "
                  f"({r['others']}) {r['auc_same']:.3f}; cosine, the region's own object {r['self_cos']:.2f} vs the others {r['other_cos']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
