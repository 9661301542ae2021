"""Shuffling that depends only on (seed, epoch), so a resumed run sees the same batches.

A plain shuffled DataLoader draws its permutation from the global torch RNG, whose state a
checkpoint does not hold: a run resumed at epoch k would shuffle differently from one that never
stopped. Lightning calls `set_epoch` on samplers that have it, as it does for DistributedSampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSeededSampler(Sampler[int]):
    """A random permutation of range(len(data)) drawn from seed + epoch."""

    def __init__(self, data: Sized, seed: int) -> None:
        self.size = len(data)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def split_loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool, num_workers: int) -> DataLoader:
    """The DataLoader of one split: shuffled by (seed, epoch) for training, in order otherwise."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSeededSampler(dataset, seed) if shuffle else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
