"""How often a generated same-as-a-region request has a target, by ``data.same_target``.

Draws ``--count`` training samples (seeds 0, 1, ...; same-as-a-region requests only, one per
sample) at each rate and prints the share whose answer grounds at least one object. ``none`` is
the contract's draw (what evaluation asks).

    python bench/same_target_share.py --count 600 --rates none 0.8 0.9 1.0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def target_share(rate: float | None, count: int) -> float:
    """Share of ``count`` same-as-a-region requests (training seeds 0..count-1) that have a target."""
    from perception.data.shapesref import make_sample

    turns = [make_sample(seed, tasks=["same_as_region"], weights=[1.0], same_target=rate).turns[0]
             for seed in range(count)]
    return sum(bool(t.targets) for t in turns) / count


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=600)
    ap.add_argument("--rates", nargs="+", default=["none", "0.8", "0.9", "1.0"])
    args = ap.parse_args(argv)
    for r in args.rates:
        rate = None if r.lower() == "none" else float(r)
        print(f"same_target {r:>5}: {target_share(rate, args.count):.3f} of {args.count} requests have a target")


if __name__ == "__main__":
    main()
