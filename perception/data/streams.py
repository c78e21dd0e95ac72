"""Training sample streams: endless ShapesRef, or a finite dataset cycled; rank- and worker-aware.

Each sample's seed is a pure function of (base seed, rank, worker, index), so a resumed run
continues with fresh samples and two ranks never draw the same scene.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


class ShapesRefStream(IterableDataset):
    def __init__(self, data_cfg, seed: int, rank: int = 0, start: int = 0):
        self.cfg, self.seed, self.rank, self.start = data_cfg, seed, rank, start

    def __iter__(self):
        from perception.data.shapesref import make_sample

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.rank, wid, self.start])
        i = self.start + wid
        while True:
            seed = (self.seed * 1_000_003 + self.rank * 100_000_007 + i) % (2**31)
            n_requests = 2 if rng.random() < self.cfg.multi_turn else 1
            yield make_sample(seed, tasks=self.cfg.tasks, weights=self.cfg.weights, n_requests=n_requests,
                              same_target=self.cfg.same_target)
            i += nw


class CycledDataset(IterableDataset):
    """A map-style dataset (JSONL, RefCOCO) shuffled per epoch, split over ranks and workers."""

    def __init__(self, dataset, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.ds, self.seed, self.rank, self.world, self.start = dataset, seed, rank, world, start

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        n = len(self.ds)
        epoch, k = 0, 0
        while True:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            for j in order[self.rank :: self.world][wid::nw]:
                if k >= self.start // max(1, nw):
                    yield self.ds[j]
                k += 1
            epoch += 1


def build_stream(data_cfg, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> IterableDataset:
    if data_cfg.source == "shapesref":
        return ShapesRefStream(data_cfg, seed, rank, start)
    if data_cfg.source == "jsonl":
        from perception.data.jsonl import JsonlDataset

        return CycledDataset(JsonlDataset(data_cfg.path), seed, rank, world, start)
    if data_cfg.source == "refcoco":
        from perception.data.refcoco import RefCocoDataset

        return CycledDataset(RefCocoDataset(data_cfg.path, data_cfg.dataset, data_cfg.split), seed, rank, world, start)
    raise ValueError(f"unknown data source {data_cfg.source!r}; known: shapesref, jsonl, refcoco")
