"""How well an object-token model's match scores say what each request asks for (issue 14).

For each ShapesRef task, ``--count`` one-request scenes (seeds from ``--seed``; keep them away
from the evaluation seeds), teacher-forced with the ground-truth masks as proposals: per turn that
asks for objects, the exact-set accuracy (every valid slot's match probability on the right side
of 0.5) and the per-slot accuracy of ``object_tokens.match`` against ``turn_match``.

    python bench/match_probe.py runs/tiny-objects/checkpoint-002200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TASKS = ["ground_A", "ground_S", "ground_R", "ground_all", "count", "ground_none", "ground_all_none", "count_none",
         "same_as_region"]


@torch.no_grad()
def probe(model, seed: int, count: int) -> dict:
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample

    ot = model.object_tokens
    if ot is None or ot.match is None:
        raise ValueError("the model has no match scores (objects.enabled and loss.match > 0)")
    col = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, seed=5)
    out = {}
    for task in TASKS:
        batch = col([make_sample(seed + i, tasks=[task]) for i in range(count)])
        state = model.encode_images(batch["pixel_values"], propose=False)
        state.objects = ot.from_masks(model.region_encoder, state.mask, batch["object_masks"], batch["object_valid"])
        regions = model.encode_regions(state, batch.get("regions"))
        emb = model.embed(batch["input_ids"], state, regions)
        _, hidden, _ = model.backbone.forward_embeds(emb, model.lm_attention(batch["input_ids"], batch.get("attention_mask")))
        logits, valid = ot.match_logits(hidden, batch["input_ids"], batch["labels"], model.prompts.object_id,
                                        state.objects.valid, model.object_score_features(batch["input_ids"], state.objects, regions))
        prob = logits.sigmoid()
        exact, slot, n = 0, 0.0, 0
        for r, t in enumerate(batch["turn_match"]):
            v = valid[r]
            if bool((t < 0).all()) or not bool(v.any()):
                continue
            right = ((prob[r] >= 0.5) == (t == 1))[v]
            exact, slot, n = exact + bool(right.all()), slot + float(right.float().mean()), n + 1
        out[task] = {"exact_set": exact / max(1, n), "slot_accuracy": slot / max(1, n), "turns": n}
    return out


def main(argv=None) -> int:
    from perception.checkpoint import from_pretrained

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an object-token checkpoint folder")
    ap.add_argument("--seed", type=int, default=12_000_000)
    ap.add_argument("--count", type=int, default=24)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rep = probe(from_pretrained(args.model).eval(), args.seed, args.count)
    for task, r in rep.items():
        print(f"{task:16s} exact set {r['exact_set']:.2f}  slot accuracy {r['slot_accuracy']:.2f}  (turns {r['turns']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
