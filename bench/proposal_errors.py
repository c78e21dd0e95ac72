"""Where an object-token model's proposals go wrong (issue 14).

On ``--count`` validation scenes (seeds from ``--seed``; keep them away from the evaluation seeds):
proposal recall at mask IoU 0.5 and false proposals (``match_proposals``), each missed object
classed by whether a heatmap peak fell on it (the click path then drew a bad mask) or none did
(the heatmap missed it), and, for the objects whose proposal failed although a peak was on them,
the precision and recall of the failed mask against the object (low precision: the click's mask
leaked onto other things). ``--no-component`` turns ``objects.proposal_component`` off.

    python bench/proposal_errors.py checkpoints/tiny
    python bench/proposal_errors.py checkpoints/tiny --no-component
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def measure(model, seed: int, count: int) -> dict:
    from perception.data.shapesref import draw_scene
    from perception.geometry import ImageFrame, mask_iou
    from perception.heads.proposals import heatmap_peaks
    from perception.objects import match_proposals

    cfg, ot = model.config, model.object_tokens
    n = dict(objects=0, found=0, proposals=0, false=0, missed_with_peak=0, missed_without_peak=0)
    failed_precision, failed_recall, ious = [], [], []
    for i in range(count):
        scene = draw_scene(np.random.default_rng(seed + i))
        frame = ImageFrame(*scene.image.size, cfg.backbone.image_size, cfg.backbone.resize_mode)
        state = model.encode_images(model.backbone.preprocess(scene.image)[None].to(model.device), propose=False)
        peaks, _, _, _ = heatmap_peaks(ot.proposal_head(state.mask.pixels), ot.k, cfg.objects.score_threshold,
                                       cfg.objects.nms_kernel)
        objs = ot.propose(model.mask_head, model.region_encoder, state.mask)
        props = [objs.pixel_mask(0, j, frame, cfg.mask_head.mask_threshold) for j in objs.valid[0].nonzero().flatten().tolist()]
        truths = [o.mask for o in scene.objects]
        match = match_proposals(props, truths)
        n["proposals"] += len(props)
        n["false"] += len(props) - sum(m is not None for m in match)
        corners = frame.boxes_to_pixels(np.concatenate([peaks.cpu().numpy()] * 2, 1)) if len(peaks) else np.zeros((0, 4))
        for k, t in enumerate(truths):
            n["objects"] += 1
            if match[k] is not None:
                n["found"] += 1
                ious.append(mask_iou(props[match[k]], t))
                continue
            H, W = t.shape
            on = [t[min(max(int(y), 0), H - 1), min(max(int(x), 0), W - 1)] for x, y in corners[:, :2]]
            if not any(on):
                n["missed_without_peak"] += 1
                continue
            n["missed_with_peak"] += 1
            best = max(props, key=lambda p: (p & t).sum(), default=None)  # the proposal the peak on it made
            if best is not None:
                inter = (best & t).sum()
                failed_precision.append(inter / max(1, best.sum()))
                failed_recall.append(inter / max(1, t.sum()))
    return {**n, "recall": n["found"] / max(1, n["objects"]), "matched_miou": float(np.mean(ious)) if ious else 0.0,
            "failed_mask_precision": float(np.mean(failed_precision)) if failed_precision else None,
            "failed_mask_recall": float(np.mean(failed_recall)) if failed_recall else None}


def main(argv=None) -> int:
    import perception

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an object-token checkpoint folder (or 'tiny')")
    ap.add_argument("--seed", type=int, default=12_000_000)
    ap.add_argument("--count", type=int, default=150)
    ap.add_argument("--no-component", action="store_true", help="objects.proposal_component off")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model = perception.load_pipeline(args.model, device="cpu").model
    if getattr(model, "object_tokens", None) is None:
        print("error: the model has no object tokens", file=sys.stderr)
        return 2
    model.config.objects.proposal_component = not args.no_component
    r = measure(model, args.seed, args.count)
    print(f"objects {r['objects']}  proposals {r['proposals']}  recall@0.5 {r['recall']:.3f}  matched mIoU "
          f"{r['matched_miou']:.3f}  false proposals {r['false']}")
    print(f"missed: {r['missed_with_peak']} with a peak on the object (bad mask), {r['missed_without_peak']} without")
    if r["failed_mask_precision"] is not None:
        print(f"failed masks: precision {r['failed_mask_precision']:.2f}, recall {r['failed_mask_recall']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
