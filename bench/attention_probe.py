"""Where the LM looks: attention from answer positions to the image tokens (a diagnostic).

    python bench/attention_probe.py [--model tiny] [--seed 10000000] [--scenes 20]

For held-out one-object ShapesRef grounding questions (teacher-forced with the reference answer),
per layer and head: the attention mass the answer positions put on all 100 image tokens, the
largest weight on a single image token, and the mass on the cells the named object covers
(its "cover" cells from perception.data.token_targets), next to what uniform attention would
put there. Means over answer positions and scenes.
Diffuse attention (small largest weights, little mass on the object) means the LM does not
retrieve the object's tokens. Used in docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def probe(model_name: str, seed: int, scenes: int) -> np.ndarray:
    """-> (layers, heads, 4): mass on image tokens, largest single weight, mass on the object's cells,
    and the mass those cells would get if the image attention were uniform."""
    import perception
    from perception.data.collate import Collator
    from perception.data.shapesref import make_sample
    from perception.data.token_targets import token_targets
    from perception.geometry import ImageFrame

    model = perception.load_pipeline(model_name, device="cpu").model
    model.backbone.llm.config._attn_implementation = "eager"  # attention weights are returned by eager attention
    col = Collator(model.config, model.tokenizer, model.backbone.num_image_tokens, clicks_per_image=0)
    g = col.token_grid
    out = []
    for i in range(scenes):
        s = make_sample(seed + i, tasks=["ground_A", "ground_S", "ground_R"])
        b = col([s])
        with torch.no_grad():
            state = model.encode_images(b["pixel_values"])
            att = model.backbone.llm(inputs_embeds=model.embed(b["input_ids"], state), output_attentions=True).attentions
        ids = b["input_ids"][0]
        img = (ids == model.prompts.image_id).nonzero().flatten()
        answer = (b["labels"][0] != -100).nonzero().flatten() - 1  # positions that predict answer tokens
        k = s.turns[0].targets[0]
        W, H = s.image.size
        own = token_targets([f"x{j}" for j in range(len(s.labels))], s.masks, s.boxes, ImageFrame(W, H, model.config.backbone.image_size),
                            g, [[f"x{j}" for j in range(len(s.labels))]], 0.2)[:, 1]  # cover target: object index + 1
        cells = (own == k + 1).nonzero().flatten()
        rows = []
        for a in att:
            w = a[0][:, answer][:, :, img]  # (heads, answer positions, image tokens)
            mass = w.sum(-1).mean(-1)
            rows.append(torch.stack([mass, w.max(-1).values.mean(-1), w[:, :, cells].sum(-1).mean(-1),
                                     mass * len(cells) / len(img)], -1))  # last: what uniform attention would give
        out.append(torch.stack(rows).numpy())
    return np.mean(out, 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seed", type=int, default=10_000_000)
    ap.add_argument("--scenes", type=int, default=20)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    res = probe(a.model, a.seed, a.scenes)
    print("| layer | head | mass on image tokens | largest single weight | mass on the named object's cells | same if uniform |")
    print("|---|---|---|---|---|---|")
    for L in range(res.shape[0]):
        for h in range(res.shape[1]):
            m, mx, obj, uni = res[L, h]
            print(f"| {L} | {h} | {m:.2f} | {mx:.3f} | {obj:.3f} | {uni:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
