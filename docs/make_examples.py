"""Regenerate the app's bundled example scenes: ``python docs/make_examples.py`` writes app/examples/scene_<seed>.png.

Each is one ShapesRef scene, ``draw_scene(np.random.default_rng(seed))``, saved as an optimised
PNG (a few tens of KB). The list below is fixed so the examples are reproducible.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from perception.data.shapesref import draw_scene  # noqa: E402

SEEDS = (0, 1, 2, 3, 4, 5)
OUT = ROOT / "app" / "examples"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for seed in SEEDS:
        scene = draw_scene(np.random.default_rng(seed))
        path = OUT / f"scene_{seed}.png"
        scene.image.save(path, optimize=True)
        labels = ", ".join(o.label for o in scene.objects)
        print(f"{path.name}: {scene.image.size[0]}x{scene.image.size[1]}, {path.stat().st_size // 1024} KB: {labels}")


if __name__ == "__main__":
    main()
