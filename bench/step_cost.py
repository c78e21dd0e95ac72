"""Training-step cost of presets on the same samples: forward + backward + AdamW, batch 16.

    python bench/step_cost.py [--presets tiny tiny-objects] [--steps 4] [--threads 2]
    python bench/step_cost.py --config configs/tiny_shapesref_v2.yaml [--steps 4] [--set data.multi_turn=0.5]

With ``--config``: one model as that training config builds it (its preset and model_overrides, its
frozen parts, no warm start), on its own task mix, share of two-request conversations
(``data.multi_turn``), batch size and collator settings, with no data worker or periodic evaluation
beside it: the recipe's step on an idle machine. ``--set`` overrides the config as ``train --set`` does.

Steps alternate between the presets (the same ShapesRef v1 + v2 samples for each, DataConfig's
default task mix), so a loaded machine slows them alike; the first step of each is a warm-up and
is not counted. Prints per preset the mean CPU seconds (this process) and wall seconds per step
and the prompt lengths. On a shared machine only the ratio between presets means much.
Used in configs/tiny_shapesref_v2.yaml.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perception.config import DataConfig  # noqa: E402
from perception.data.collate import Collator  # noqa: E402
from perception.data.shapesref import make_sample  # noqa: E402
from perception.model import PerceptionModel  # noqa: E402
from perception.presets import get_preset  # noqa: E402
from perception.tokenizer import build_tiny_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "tiny-objects"])
    ap.add_argument("--steps", type=int, default=4, help="steps per preset, the first one a warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--config", help="a training config (YAML): measure its model, frozen parts, mix and batch instead of --presets")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of --config's values (as train --set)")
    args = ap.parse_args()
    if args.set and not args.config:
        raise SystemExit("--set needs --config")
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first is a warm-up)")
    torch.set_num_threads(args.threads)
    data, tok = DataConfig(), build_tiny_tokenizer()
    runs = {}
    if args.config:
        from perception.train import build_model, load_train_config, make_collator

        tc = load_train_config(args.config, ["init_from=null", *args.set])
        data, args.batch = tc.data, tc.batch_size
        torch.manual_seed(0)
        m = build_model(tc).train()
        col = make_collator(m, tc)
        runs[args.config] = (m, col, torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4), [])
    for name in [] if args.config else args.presets:
        torch.manual_seed(0)
        m = PerceptionModel(get_preset(name), tok).train()
        col = Collator(m.config, m.tokenizer, m.backbone.num_image_tokens, seed=0)
        runs[name] = (m, col, torch.optim.AdamW(m.parameters(), lr=1e-4), [])
    turns = random.Random(0)  # two-request conversations at the mix's rate, as the training stream draws them
    for step in range(args.steps):
        samples = [make_sample(1000 * step + i, tasks=data.tasks, weights=data.weights,
                               n_requests=2 if turns.random() < data.multi_turn else 1) for i in range(args.batch)]
        for m, col, opt, times in runs.values():
            batch = col(samples)
            cpu, wall = time.process_time(), time.time()
            loss = m(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append((time.process_time() - cpu, time.time() - wall, batch["input_ids"].shape[1]))
    for name, (_, _, _, times) in runs.items():
        t = times[1:]
        print(f"{name}: {sum(x[0] for x in t) / len(t):.2f} CPU s/step, {sum(x[1] for x in t) / len(t):.2f} wall s/step, "
              f"prompt tokens {[x[2] for x in t]}")


if __name__ == "__main__":
    main()
