"""Shuffling that depends only on (seed, epoch), so a resumed run sees the same batches.

A plain shuffled DataLoader draws its permutation from the global torch RNG, whose state a
checkpoint does not hold: a run resumed at epoch k would shuffle differently from one that never
stopped. Lightning calls `set_epoch` on samplers that have it, as it does for DistributedSampler.
The split loaders built on it also pass through the batches that a dataset's `__getitems__`
gathers at once (data/antipodal.py), which the default collate cannot read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate


class EpochSeededSampler(Sampler[int]):
    """A random permutation of range(len(data)) drawn from the pair (seed, epoch).

    The pair is hashed by numpy's SeedSequence rather than added: with `seed + epoch`, seed 42 at
    epoch 1 would shuffle exactly like seed 43 at epoch 0, and runs of neighbouring seeds would
    not be independent.
    """

    def __init__(self, data: Sized, seed: int) -> None:
        self.size = len(data)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=epoch_generator(self.seed, self.epoch)).tolist())


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch Generator whose state depends on (seed, epoch) jointly: no two pairs share a stream."""
    (state,) = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state))


def collate_batches(data: Any) -> Any:
    """default_collate, except for a batch that a dataset's `__getitems__` built already (a mapping
    of batched tensors), which passes through."""
    return data if isinstance(data, Mapping) else default_collate(data)


def split_loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool, num_workers: int) -> DataLoader:
    """The DataLoader of one split: shuffled by (seed, epoch) for training, in order otherwise."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSeededSampler(dataset, seed) if shuffle else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_batches,
    )
