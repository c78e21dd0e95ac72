"""What decides whether an object-token model's answer grounds anything (issue 14).

For each request kind, on ``--count`` validation scenes (seeds from ``--seed``; keep them away from
the evaluation seeds), through the pipeline with the model's own proposals: the highest match
probability among the proposals (``objects.match_gate`` / ``start_gate`` read it) and the LM's
probability that the answer starts by grounding (``<p>`` or ``<loc>`` as its first token). Same-as-a-
region requests are split into those with a target (+) and those without (-).

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
            turn.decoder.see_prompt(turn.input_ids[0], hidden[0])
            valid = turn.state.objects.valid[0]
            top = float(turn.decoder._match[valid].max()) if bool(valid.any()) else 0.0
            ground = float(logits[0, -1].float().softmax(-1)[first].sum())
            kind = t.task + ("+" if t.targets else "-") if t.task == "same_as_region" else t.task
            out.setdefault(kind, []).append((top, ground))
    return {k: {"n": len(v), "top_match": float(np.mean([a for a, _ in v])),
                "top_match_over_0.5": float(np.mean([a >= 0.5 for a, _ in v])),
                "p_ground_first": float(np.mean([b for _, b in v]))} for k, v in out.items()}


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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
