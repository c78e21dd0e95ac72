"""The in-memory form of one training / evaluation example, shared by every data source.

Frames: pixels of ``image`` (x = column, y = row); boxes are corners with x2/y2 exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from perception.types import Region


@dataclass
class Turn:
    """One user message and the answer the model should give.

    user:      the message; ``<region1>``.. name ``regions`` in order.
    assistant: the target answer in the project's markup (see perception.tokens), e.g.
               ``"<p>the red circle</p><loc>"``.
    regions:   Region per placeholder, in placeholder order.
    targets:   index into Sample.boxes/masks for each ``<loc>`` of ``assistant``, in order.
    task:      "ground_A" | "ground_S" | "ground_R" | "ground_all" | "count" | "region_what" |
               "region_describe" | "region_color" | "region_shape" | "click_seg" (or a loader's own).
    expect:    words the answer must contain (region questions, counting); [] otherwise.
    """

    user: str
    assistant: str
    regions: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    task: str = ""
    expect: list = field(default_factory=list)


@dataclass
class Sample:
    """An image, its objects' ground truth, and a conversation about it.

    boxes:  (K, 4) float32 pixel corners.   masks: (K, H, W) bool (K may be 0).
    labels: K strings such as "small red circle" (may be empty strings for real data).
    """

    image: Image.Image
    boxes: np.ndarray
    masks: np.ndarray
    labels: list
    turns: list
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for t in self.turns:
            n = t.assistant.count("<loc>")
            if n != len(t.targets):
                raise ValueError(f"turn {t.user!r}: {n} <loc> tokens but {len(t.targets)} targets")
            for r in t.regions:
                if not isinstance(r, Region):
                    raise TypeError(f"turn regions must be perception.Region, got {type(r).__name__}")
