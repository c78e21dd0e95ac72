"""Samples -> a training batch for PerceptionModel.forward (teacher forcing).

All geometry goes through ``ImageFrame``; targets are in the normalised model frame.
"""

from __future__ import annotations

import numpy as np
import torch

from perception.data.sample import Sample
from perception.data.token_targets import object_targets, token_targets
from perception.geometry import ImageFrame, box_from_mask, box_iou, mask_iou
from perception.processing import backbone_pixels, mask_side, sam_pixels
from perception.prompting import IGNORE, PromptEncoder


class Collator:
    """Callable that builds a batch dict from a list of Samples.

    click_teacher: probability that a point region is encoded from its object's true mask
    instead of the click head's prediction (the click head is immature early in training).
    """

    def __init__(self, config, tokenizer, num_image_tokens: int, clicks_per_image: int = 1,
                 click_teacher: float = 0.5, seed: int = 0):
        self.config = config
        self.prompts = PromptEncoder(tokenizer, num_image_tokens)
        self.side = mask_side(config)
        self.region_side = config.region.mask_size * 2
        self.token_grid = int(round(num_image_tokens ** 0.5))  # image tokens form a square grid (token targets)
        self.clicks_per_image = 0 if config.output_mode == "text_box" else clicks_per_image  # baseline: no click auxiliary
        self.click_teacher = click_teacher
        self.rng = np.random.default_rng(seed)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, samples: list[Sample]) -> dict:
        cfg = self.config
        if cfg.output_mode == "text_box":  # baseline: boxes as text, no <loc>, heads get no targets
            from perception.baseline import to_text_boxes

            samples = [to_text_boxes(s, cfg.backbone) for s in samples]
        ids, labels = [], []
        loc_masks, loc_boxes, loc_fed = [], [], []
        reg = {k: [] for k in ("bidx", "is_box", "is_point", "boxes", "masks", "points", "use_mask")}
        clk = {"bidx": [], "points": [], "masks": []}
        pixels, sam = [], []
        # dense token targets; the text_box baseline trains on cross-entropy only
        aux = cfg.token_aux if cfg.token_aux.attributes and cfg.loss.token_aux and cfg.output_mode != "text_box" else None
        tok_t = []
        # attribute targets of each <loc>'s and each region's object (region read-out)
        obj_aux = cfg.token_aux if cfg.token_aux.attributes and cfg.loss.region_aux and cfg.output_mode != "text_box" else None
        loc_attrs, region_attrs = [], []
        for b, s in enumerate(samples):
            W, H = s.image.size
            frame = ImageFrame(W, H, cfg.backbone.image_size, cfg.backbone.resize_mode)
            pixels.append(backbone_pixels(s.image, cfg.backbone))
            if cfg.mask_head.kind == "sam" and cfg.mask_head.sam_variant:
                sam.append(sam_pixels(s.image, cfg.mask_head.sam_image_size))
            if aux is not None:
                tok_t.append(token_targets(s.labels, s.masks, s.boxes, frame, self.token_grid, aux.attributes, aux.min_cover))
            objs = object_targets(s.labels, obj_aux.attributes) if obj_aux is not None and len(s.labels) else None
            enc = self.prompts.encode([(t.user, t.assistant) for t in s.turns])
            ids.append(enc.input_ids)
            labels.append(enc.labels)
            for ti, t in enumerate(s.turns):
                for k in t.targets:
                    loc_fed.append(ti == len(s.turns) - 1)  # generation feeds back only the answer being written
                    loc_masks.append(frame.mask_to_model(s.masks[k], self.side))
                    loc_boxes.append(torch.tensor(frame.boxes_to_model(s.boxes[k]), dtype=torch.float32))
                    if objs is not None:
                        loc_attrs.append(objs[k])
            for ti, n in enc.region_order:
                region = s.turns[ti].regions[n - 1]
                self._add_region(reg, b, s, region, frame)
                if objs is not None:
                    k = region_object(s, region)
                    region_attrs.append(objs[k] if k is not None else torch.full_like(objs[0], IGNORE))
            for _ in range(self.clicks_per_image if len(s.boxes) else 0):
                k = int(self.rng.integers(len(s.boxes)))
                ys, xs = np.nonzero(s.masks[k])
                j = int(self.rng.integers(len(xs)))
                clk["bidx"].append(b)
                clk["points"].append(torch.tensor(frame.points_to_model((xs[j], ys[j])), dtype=torch.float32))
                clk["masks"].append(frame.mask_to_model(s.masks[k], self.side))
        T = max(map(len, ids))
        batch = {
            "pixel_values": torch.stack(pixels),
            "input_ids": torch.tensor([x + [self.pad_id] * (T - len(x)) for x in ids]),
            "labels": torch.tensor([x + [IGNORE] * (T - len(x)) for x in labels]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids]),
            "loc_masks": torch.stack(loc_masks) if loc_masks else torch.zeros(0, self.side, self.side),
            "loc_boxes": torch.stack(loc_boxes) if loc_boxes else torch.zeros(0, 4),
            "loc_fed": torch.tensor(loc_fed, dtype=torch.bool),
            "regions": _stack(reg) if reg["bidx"] else None,
            "clicks": _stack(clk) if clk["bidx"] else None,
        }
        if tok_t:
            batch["token_targets"] = torch.stack(tok_t)
        if obj_aux is not None:
            G = len(obj_aux.attributes)
            batch["loc_attrs"] = torch.stack(loc_attrs) if loc_attrs else torch.zeros(0, G, dtype=torch.long)
            batch["region_attrs"] = torch.stack(region_attrs) if region_attrs else torch.zeros(0, G, dtype=torch.long)
        if sam:
            batch["mask_pixel_values"] = torch.stack(sam)
        return batch

    def _add_region(self, reg, b, s: Sample, region, frame: ImageFrame):
        g = region_geometry(region, frame, self.region_side)
        g["use_mask"] = False
        if region.kind == "point":  # teacher forcing: sometimes encode the clicked object's true mask
            x, y = int(region.point[0]), int(region.point[1])
            hits = [k for k in range(len(s.masks)) if s.masks[k][y, x]]
            if hits and self.rng.random() < self.click_teacher:
                g["masks"] = frame.mask_to_model(s.masks[hits[-1]], self.region_side)
                g["use_mask"] = True
        reg["bidx"].append(b)
        for k, v in g.items():
            reg[k].append(v)


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


def region_geometry(region, frame: ImageFrame, side: int) -> dict:
    """A Region in pixels -> the region encoder's inputs in the normalised model frame.

    Returns {"is_box", "is_point", "boxes" (4,), "masks" (side, side), "points" (2,)}; a point's
    mask is left empty (the model fills it through the click path).
    """
    point = torch.zeros(2)
    if region.kind == "box":
        box = frame.boxes_to_model(region.box)
        mask = box_mask(box, side)
    elif region.kind == "mask":
        mask = frame.mask_to_model(region.mask, side)
        tb = box_from_mask(region.mask)
        box = frame.boxes_to_model(tb) if tb else np.zeros(4)
    else:
        mask = torch.zeros(side, side)
        box = np.zeros(4)
        point = torch.tensor(frame.points_to_model(region.point), dtype=torch.float32)
    return {
        "is_box": region.kind == "box",
        "is_point": region.kind == "point",
        "boxes": torch.tensor(box, dtype=torch.float32),
        "masks": mask,
        "points": point,
    }


def box_mask(box_norm, side: int) -> torch.Tensor:
    """A normalised corner box rasterised as a filled (side, side) float mask."""
    x1, y1, x2, y2 = (np.asarray(box_norm) * side).tolist()
    m = torch.zeros(side, side)
    m[int(np.floor(y1)) : max(int(np.ceil(y2)), int(np.floor(y1)) + 1), int(np.floor(x1)) : max(int(np.ceil(x2)), int(np.floor(x1)) + 1)] = 1
    return m


def _stack(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v[0], torch.Tensor):
            out[k] = torch.stack(v)
        else:
            out[k] = torch.tensor(v)
    return out


def to_device(batch: dict, device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device)
        elif isinstance(v, dict):
            out[k] = to_device(v, device)
        else:
            out[k] = v
    return out
