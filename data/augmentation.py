"""Training-split augmentation for windowed vector and field data: noise injection and temporal shift.

    python train_hydra.py data.augmentation.noise_std=0.01 data.augmentation.max_shift=5 data.augmentation.augmentation_prob=0.5

Each training window is augmented with probability `augmentation_prob`; an augmented window
- is replaced by the window `k` positions away, k uniform in [-max_shift, max_shift], clamped to the
  split (the same regime and transition flags travel with it, so targets stay aligned). With
  `data.stride` > 1 this reaches windows between the strided starts; with stride 1 it jitters which
  windows an epoch sees together;
- gets x + noise_std * N(0, 1) per input value (vector entries or field pixels); targets are clean.

Why Gaussian noise keeps the Z2 symmetry: the antipodal process is invariant under x -> -x, and the
noise eps is symmetric (eps and -eps have the same law), so -(x + eps) = (-x) + (-eps) has the law of
an augmented -x: the augmented data keep the exact symmetry. A noise without that property (a bias,
|eps|, a skewed law) would give the data a preferred sign that equivariant models cannot represent
and that other models would learn.

Draws come from a generator seeded by (seed, epoch, window index), so a run, a resumed run and any
number of loader workers see the same augmented batches. Validation and test loaders never use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.epoch_sampling import EpochSeededSampler, split_loader


@dataclass(frozen=True)
class Augmentation:
    """The `data.augmentation` block; all zero (the default) means no augmentation."""

    noise_std: float = 0.0
    max_shift: int = 0
    augmentation_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.noise_std < 0:
            raise ValueError(f"augmentation.noise_std={self.noise_std} must be >= 0.")
        if self.max_shift < 0:
            raise ValueError(f"augmentation.max_shift={self.max_shift} must be a non-negative integer.")
        if not 0.0 <= self.augmentation_prob <= 1.0:
            raise ValueError(f"augmentation.augmentation_prob={self.augmentation_prob} must lie in [0, 1].")
        if self.augmentation_prob > 0 and self.noise_std == 0 and self.max_shift == 0:
            raise ValueError(
                f"augmentation.augmentation_prob={self.augmentation_prob} has nothing to apply; "
                "set augmentation.noise_std > 0 or augmentation.max_shift > 0."
            )

    @property
    def enabled(self) -> bool:
        return self.augmentation_prob > 0


class EpochTaggedSampler(EpochSeededSampler):
    """EpochSeededSampler's permutation, each index yielded as (index, epoch) for AugmentedWindows."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((index, self.epoch) for index in super().__iter__())


class AugmentedWindows(Dataset):
    """`windows` (a dataset of {"x", "y", ...} dicts) read by (index, epoch) keys, augmented as the
    module docstring says."""

    def __init__(self, windows: Dataset, augmentation: Augmentation, seed: int) -> None:
        self.windows, self.augmentation, self.seed = windows, augmentation, seed

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        rng = np.random.default_rng((self.seed, epoch, index))
        if rng.random() >= self.augmentation.augmentation_prob:
            return self.windows[index]
        shift = int(rng.integers(-self.augmentation.max_shift, self.augmentation.max_shift + 1))
        item = dict(self.windows[min(max(index + shift, 0), len(self) - 1)])
        if self.augmentation.noise_std > 0:
            noise = rng.standard_normal(item["x"].shape, dtype=np.float32) * self.augmentation.noise_std
            item["x"] = item["x"] + torch.from_numpy(noise).to(item["x"].dtype)
        return item


def train_loader(
    windows: Dataset, augmentation: Augmentation, batch_size: int, seed: int, num_workers: int
) -> DataLoader:
    """The training DataLoader: split_loader's, augmented when `augmentation` is enabled (same order)."""
    if not augmentation.enabled:
        return split_loader(windows, batch_size, seed, shuffle=True, num_workers=num_workers)
    return DataLoader(
        AugmentedWindows(windows, augmentation, seed),
        batch_size=batch_size,
        sampler=EpochTaggedSampler(windows, seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
