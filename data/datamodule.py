"""What every DataModule of the project shares: the split and loader checks, the three split
loaders, and the target id that carries no loss."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from data.epoch_sampling import split_loader

IGNORE_INDEX = -100  # target id that carries no loss (torch's cross-entropy default)


def checked_split(
    split: tuple[float, ...] | list[float], batch_size: int, num_workers: int
) -> tuple[float, float, float]:
    """The train/val/test fractions as floats, after checking them and the loader options every
    DataModule shares; a bad value fails in one sentence naming it."""
    split = tuple(float(fraction) for fraction in split)
    if len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split={list(split)} must be three positive fractions (train, val, test) that sum to 1.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be a positive integer.")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers} must be >= 0.")
    return split


class SplitDataModule(pl.LightningDataModule):
    """A DataModule whose `setup` fills `self.datasets` with its "train", "val" and "test" splits.

    Subclasses set `batch_size`, `num_workers` and `seed` (the seed of the training order); the
    training split is shuffled by (seed, epoch), so a resumed run sees the batches an unbroken one
    would, and the other splits are read in order.
    """

    datasets: dict[str, Dataset]
    batch_size: int
    num_workers: int
    seed: int

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return split_loader(self.datasets[split], self.batch_size, self.seed, shuffle, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
