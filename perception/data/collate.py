"""Samples -> a training batch for PerceptionModel.forward (teacher forcing).

All geometry goes through ``ImageFrame``; targets are in the normalised model frame.
"""

from __future__ import annotations

import numpy as np
import torch

from perception.data.sample import Sample
from perception.geometry import ImageFrame, box_iou, mask_iou
from perception.heads.aux import SampleObjects
from perception.objects import object_slots
from perception.processing import backbone_pixels, mask_side, sam_pixels
from perception.prompting import IGNORE, PromptEncoder, image_after_question
from perception.regions import Regions


class Collator:
    """Callable that builds a batch dict from a list of Samples (``PerceptionModel.forward``'s input).

    click_teacher: probability that a point region is encoded from its object's true mask
    instead of the click head's prediction (the click head is immature early in training).
    The text-box baseline's samples are rewritten first (perception/baseline.py): no <loc>, no
    click auxiliary, no auxiliary heads.
    """

    def __init__(self, config, tokenizer, num_image_tokens: int, clicks_per_image: int = 1,
                 click_teacher: float = 0.5, seed: int = 0):
        from perception.heads.aux import enabled_aux_heads

        self.config = config
        self.prompts = PromptEncoder(tokenizer, num_image_tokens, object_slots(config),
                                     image_after_question=image_after_question(config))
        self.side = mask_side(config)
        self.region_side = config.region.mask_size * 2
        self.token_grid = int(round(num_image_tokens ** 0.5))  # image tokens form a square grid (token targets)
        self.text_box = config.output_mode == "text_box"
        self.clicks_per_image = 0 if self.text_box else clicks_per_image
        self.aux = enabled_aux_heads(config)
        self.sam_side = config.mask_head.sam_image_size if config.mask_head.kind == "sam" and config.mask_head.sam_variant else None
        self.click_teacher = click_teacher
        self.rng = np.random.default_rng(seed)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, samples: list[Sample]) -> dict:
        if self.text_box:
            from perception.baseline import to_text_boxes

            samples = [to_text_boxes(s, self.config.backbone) for s in samples]
        ids, labels, loc_masks, loc_boxes, loc_fed, clicks, regions, teacher = [], [], [], [], [], [], [], []
        aux = {}
        for b, s in enumerate(samples):
            frame = ImageFrame(*s.image.size, self.config.backbone.image_size, self.config.backbone.resize_mode)
            enc = self.prompts.encode([(t.user, t.assistant) for t in s.turns])
            ids.append(enc.input_ids)
            labels.append(enc.labels)
            locs = [(ti, k) for ti, t in enumerate(s.turns) for k in t.targets]
            for ti, k in locs:
                # generation feeds back the answer being written, and with loc_feedback_history the history's answers too
                loc_fed.append(self.config.loc_feedback_history or ti == len(s.turns) - 1)
                loc_masks.append(frame.mask_to_model(s.masks[k], self.side))
                loc_boxes.append(torch.tensor(frame.boxes_to_model(s.boxes[k]), dtype=torch.float32))
            placed = [s.turns[ti].regions[n - 1] for ti, n in enc.region_order]
            regions += [(r, frame, b) for r in placed]
            teacher += [self._teacher_mask(s, r) for r in placed]
            clicks += [(b, frame, s.masks[k]) for k in self._click_objects(s)]
            objs = SampleObjects(s, frame, self.token_grid, [k for _, k in locs], [region_object(s, r) for r in placed], self.rng)
            for head in self.aux:
                for key, value in head.sample_targets(self.config, objs).items():
                    aux.setdefault(key, []).append(value)
        T = max(map(len, ids))
        batch = {
            "pixel_values": torch.stack([backbone_pixels(s.image, self.config.backbone) for s in samples]),
            "input_ids": torch.tensor([x + [self.pad_id] * (T - len(x)) for x in ids]),
            "labels": torch.tensor([x + [IGNORE] * (T - len(x)) for x in labels]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids]),
            "loc_masks": torch.stack(loc_masks) if loc_masks else torch.zeros(0, self.side, self.side),
            "loc_boxes": torch.stack(loc_boxes) if loc_boxes else torch.zeros(0, 4),
            "loc_fed": torch.tensor(loc_fed, dtype=torch.bool),
            "regions": Regions.build(regions, self.region_side, teacher),
            "clicks": self._clicks(clicks),
        }
        batch.update({k: torch.cat(v) for k, v in aux.items()})
        if self.sam_side:
            batch["mask_pixel_values"] = torch.stack([sam_pixels(s.image, self.sam_side) for s in samples])
        return batch

    def _teacher_mask(self, s: Sample, region):
        """Teacher forcing: with probability ``click_teacher`` a point region is encoded from the
        true mask of the object under it (None: the click path decides)."""
        if region.kind != "point":
            return None
        k = region_object(s, region)
        return s.masks[k] if k is not None and self.rng.random() < self.click_teacher else None

    def _click_objects(self, s: Sample) -> list:
        return [int(self.rng.integers(len(s.boxes))) for _ in range(self.clicks_per_image if len(s.boxes) else 0)]

    def _clicks(self, clicks: list):
        """[(batch row, frame, (H, W) object mask)] -> the click auxiliary's {"bidx", "points", "masks"}
        (one random pixel of each mask, normalised model frame), or None."""
        if not clicks:
            return None
        points = []
        for _, frame, mask in clicks:
            ys, xs = np.nonzero(mask)
            j = int(self.rng.integers(len(xs)))
            points.append(torch.tensor(frame.points_to_model((xs[j], ys[j])), dtype=torch.float32))
        return {"bidx": torch.tensor([b for b, _, _ in clicks]), "points": torch.stack(points),
                "masks": torch.stack([frame.mask_to_model(m, self.side) for _, frame, m in clicks])}


def region_object(s: Sample, region) -> int | None:
    """Index of the sample's object a Region refers to: the topmost visible mask under a point, the
    best-overlapping box or mask; None when nothing overlaps."""
    if not len(s.boxes):
        return None
    if region.kind == "point":
        x, y = int(region.point[0]), int(region.point[1])
        hits = [k for k in range(len(s.masks)) if s.masks[k][y, x]]
        return hits[-1] if hits else None
    if region.kind == "box":
        iou = np.array([box_iou(ob, region.box) for ob in s.boxes])
    else:
        iou = np.array([mask_iou(m, region.mask) for m in s.masks])
    return int(iou.argmax()) if iou.max() > 0 else None


def to_device(batch: dict, device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, (torch.Tensor, Regions)):
            out[k] = v.to(device)
        elif isinstance(v, dict):
            out[k] = to_device(v, device)
        else:
            out[k] = v
    return out
