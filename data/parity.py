"""Running parity of a bit stream (`data=parity`): the positive control of the seam experiment.

Each sample is a sequence of random bits x_0 .. x_{L-1} (token ids 0 and 1) and, at every step,
the target y_t = (x_0 + ... + x_t) mod 2. Training sequences are short; validation and test
sequences are longer, so the metrics measure length generalisation: a model that has learned the
rule (flip the state at every 1) is right at any length, one that has memorised short patterns is
not. A diagonal linear recurrence h_t = a_t h_{t-1} + b_t solves parity only when a_t can be
negative (Grazzi et al., ICLR 2025): z2_delta with its seam can, with `model.seam=false` it cannot.
Everything is generated in memory from `seed`; nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from data.datamodule import SplitDataModule, checked_split

SPLITS = ("train", "val", "test")


def running_parity(bits: torch.Tensor) -> torch.Tensor:
    """y_t = (x_0 + ... + x_t) mod 2 along the last axis, for a tensor of 0/1 ids."""
    return bits.cumsum(-1) % 2


class ParitySequences(Dataset):
    """`count` random bit sequences of `length` steps, with their running parity as targets."""

    def __init__(self, count: int, length: int, generator: torch.Generator) -> None:
        self.bits = torch.randint(0, 2, (count, length), generator=generator)
        self.parity = running_parity(self.bits)

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.bits[index], "y": self.parity[index]}


class ParityDataModule(SplitDataModule):
    """Running parity of random bits: train on `train_length`, validate and test on longer sequences.

    Args:
        train_length, val_length, test_length: steps per sequence in each split; validation and
            test must be at least as long as training (they measure length generalisation).
        num_sequences: sequences drawn in total, divided among the splits by `split`.
        split: train/val/test fractions of `num_sequences`.
        batch_size, num_workers: DataLoader options.
        seed: draws the bits (each split from its own stream) and the training order.
    """

    task = "classification"
    target_mode = "next_step"  # a target at every step
    vocab_size = 2
    output_dim = 2

    def __init__(
        self,
        train_length: int = 16,
        val_length: int = 64,
        test_length: int = 256,
        num_sequences: int = 10000,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        lengths = {"train": train_length, "val": val_length, "test": test_length}
        for split_name, length in lengths.items():
            if length < 1:
                raise ValueError(f"{split_name}_length={length} must be a positive integer.")
            if length < train_length:
                raise ValueError(
                    f"{split_name}_length={length} must be >= train_length={train_length}: the "
                    "longer splits measure generalisation beyond the training length."
                )
        split = checked_split(split, batch_size, num_workers)
        counts = {name: int(num_sequences * fraction) for name, fraction in zip(SPLITS, split)}
        if min(counts.values()) < 1:
            raise ValueError(
                f"num_sequences={num_sequences} leaves a split without sequences for split={list(split)}; "
                "use more sequences."
            )
        self.lengths = lengths
        self.max_sequence_length = max(lengths.values())
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets = {
            name: ParitySequences(counts[name], lengths[name], torch.Generator().manual_seed(seed * len(SPLITS) + i))
            for i, name in enumerate(SPLITS)
        }
        self.save_hyperparameters(
            {
                **{f"{name}_length": length for name, length in lengths.items()},
                "num_sequences": num_sequences,
                "split": list(split),
                "batch_size": batch_size,
                "seed": seed,
            }
        )
