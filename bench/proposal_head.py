"""Can a proposal head learn object centres on the frozen stage-3 mask features? (issue 14)

Trains only a fresh ``ProposalHead`` (the centre heatmap, perception/heads/proposals.py) for
``--steps`` steps on the v2 recipe's training batches (configs/tiny_shapesref_v2.yaml: its warm
start from runs/tiny-stage3, frozen stem and mask head, training seeds), and prints the focal
loss averaged over each 50 steps. AdamW lr 1.5e-3, batch 16, 2 threads.

    python bench/proposal_head.py --dilations 1 --pool 1        # the first head: 3 x 3 receptive field
    python bench/proposal_head.py --dilations 1,2,4 --pool 2    # the tiny-objects preset's head

Measured (2-core CPU, 200 steps): pool 1 / (1,): 8.66, 1.63, 1.22, 1.18 (0.57 s/step in all);
pool 1 / (1,2,4): 1.80, 0.52, 0.39, 0.33 (1.17 s/step); pool 2 / (1,2): 11.26, 0.78, 0.58, 0.47
(0.66 s/step); pool 2 / (1,2,4): 2.30, 0.62, 0.41, 0.35 (0.67 s/step).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from perception.heads.proposals import ProposalHead, centre_focal_loss, centre_heatmap
    from perception.train import build_model, load_train_config, make_loader

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dilations", default="1", help="comma-separated dilations, one 3x3 convolution each")
    ap.add_argument("--pool", type=int, default=1)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny_shapesref_v2.yaml"))
    args = ap.parse_args(argv)
    dilations = tuple(int(x) for x in args.dilations.split(","))
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tc = load_train_config(args.config, ["output_dir=/tmp/bench-proposal-head"])
    model = build_model(tc).train()
    head = ProposalHead(model.config.mask_head.dim, dilations=dilations, pool=args.pool)
    opt = torch.optim.AdamW(head.parameters(), lr=1.5e-3, weight_decay=0.05)
    sigma = model.config.objects.heatmap_sigma
    t0, losses = time.time(), []
    for i, batch in enumerate(make_loader(model, tc, 0, 1, 0)):
        if i >= args.steps:
            break
        with torch.no_grad():
            feats = model.encode_images(batch["pixel_values"], propose=False).mask
        heat = head(feats.pixels)
        gt = batch["object_masks"] * batch["object_is_gt"][..., None, None]
        target = torch.stack([centre_heatmap(g[g.flatten(1).amax(1) > 0], heat.shape[-2:], sigma) for g in gt])
        loss = centre_focal_loss(heat, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if (i + 1) % 50 == 0:
            print(f"pool {args.pool} dilations {dilations} step {i + 1}: focal loss {sum(losses[-50:]) / 50:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
