"""Sampling that makes runs reproducible and resumable to the sample.

Augmentation randomness is a function of (seed, epoch, index), so it does not depend on the number
of loader workers or on where a run was interrupted; the sampler can start mid-epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class SeededDataset(Dataset):
    """Seeds Python's, numpy's and torch's RNG per item (restoring them after), from (seed, epoch, index): the
    crop and flip draw from torch and Python, the original's RandomAugment from numpy."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % (2**63)
        state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(s)
                np.random.seed(s % 2**32)
                torch.manual_seed(s)
                return self.dataset[index]
        finally:
            random.setstate(state)
            np.random.set_state(np_state)

    def __getattr__(self, name: str):
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableSampler(Sampler[int]):
    """This rank's share of a seeded per-epoch permutation (padded to equal shares), from `start` on."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        self.size, self.num_replicas, self.rank, self.shuffle, self.seed = size, num_replicas, rank, shuffle, seed
        self.epoch, self.start = 0, 0
        self.per_rank = -(-size // num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """`start`: how many of this rank's samples of the epoch were already consumed."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.num_replicas
        order += order[: total - len(order)]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
