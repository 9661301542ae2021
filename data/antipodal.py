"""Antipodal regime-switching data: the primary task of the project.

A latent linear system whose dynamics flip sign when a hidden regime switches,
    r_t in {+1, -1}, r_0 = +1, P(r_{t+1} = -r_t) = p_switch
    z_{t+1} = r_t A z_t + eps_t,  eps_t ~ N(0, sigma_epsilon^2 I)
    x_t     = C z_t + eta_t,      eta_t ~ N(0, sigma_eta^2 I)
with A = Q diag(0.95, ..., 0.60) Q^T (Q random orthogonal), C_ij ~ N(0, 1/4), z_0 ~ N(0, I).
The flip x -> -x is an exact symmetry of the process; a regime switch is the seam where the sign
convention of the dynamics flips. A switch at s (r_s != r_{s-1}) first changes x_{s+1}; by default
(`window="observable"`) the transition steps are the first `window_radius` observations a switch
changes, s+1 .. s+w. `window="symmetric"` is the seed paper's s-w .. s+w-1, for comparison only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import ortho_group
from torch.utils.data import DataLoader, Dataset

from data.augmentation import Augmentation, train_loader
from data.datamodule import SplitDataModule, checked_split

TARGET_MODES = ("last", "next_step")
WINDOWS = ("observable", "symmetric")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class AntipodalProcessConfig:
    """Parameters of the generator; every field is validated once, here."""

    T: int = 10000
    latent_dim: int = 8
    obs_dim: int = 4
    p_switch: float = 0.05
    sigma_epsilon: float = 0.01
    sigma_eta: float = 0.05
    window_radius: int = 5
    window: str = "observable"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("T", "latent_dim", "obs_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"generator.{name}={getattr(self, name)} must be a positive integer.")
        if not 0.0 <= self.p_switch <= 1.0:
            raise ValueError(f"generator.p_switch={self.p_switch} is outside the allowed range [0, 1].")
        for name in ("sigma_epsilon", "sigma_eta"):
            if getattr(self, name) < 0:
                raise ValueError(f"generator.{name}={getattr(self, name)} must be >= 0.")
        if self.window_radius < 0:
            raise ValueError(f"generator.window_radius={self.window_radius} must be >= 0.")
        if self.window not in WINDOWS:
            raise ValueError(f"generator.window={self.window!r} is not allowed; choose one of: {', '.join(WINDOWS)}.")


@dataclass(frozen=True)
class AntipodalSequence:
    """One generated trajectory and the true parameters that produced it (for reference filters)."""

    x: np.ndarray  # (T, obs_dim) observations
    z: np.ndarray  # (T, latent_dim) latent states
    regime: np.ndarray  # (T,) in {+1, -1}
    transition: np.ndarray  # (T,) bool, in a transition window (config.window) of a switch
    A: np.ndarray
    C: np.ndarray
    config: AntipodalProcessConfig = field(repr=False)

    @property
    def switch_steps(self) -> np.ndarray:
        """Steps s with r_s != r_{s-1}."""
        return np.flatnonzero(self.regime[1:] != self.regime[:-1]) + 1


def transition_mask(regime: np.ndarray, window_radius: int, window: str = "observable") -> np.ndarray:
    """Transition steps of a regime sequence, for switches s (r_s != r_{s-1}) and w = window_radius.

    observable: s + 1 <= t <= s + w, the first w observations the switch changes (x_{s+1} is the
        first one produced by the new sign r_s);
    symmetric: s - w <= t <= s + w - 1, the seed paper's window (6 of its 2w steps precede any
        observable change when w = 5).
    """
    if window not in WINDOWS:
        raise ValueError(f"window={window!r} is not allowed; choose one of: {', '.join(WINDOWS)}.")
    mask = np.zeros(len(regime), dtype=bool)
    for s in np.flatnonzero(regime[1:] != regime[:-1]) + 1:
        if window == "observable":
            mask[s + 1 : s + 1 + window_radius] = True
        else:
            mask[max(0, s - window_radius) : s + window_radius] = True
    return mask


def generate_antipodal(config: AntipodalProcessConfig) -> AntipodalSequence:
    """Draw one trajectory; the same config (seed included) always gives the same arrays."""
    rng = np.random.default_rng(config.seed)
    n, m, steps = config.latent_dim, config.obs_dim, config.T
    rotation = ortho_group.rvs(n, random_state=rng) if n > 1 else np.ones((1, 1))
    A = rotation @ np.diag(np.linspace(0.95, 0.60, n)) @ rotation.T
    C = rng.normal(0.0, 0.5, size=(m, n))

    flips = rng.random(steps - 1) < config.p_switch
    regime = np.concatenate([[1], np.where(flips, -1, 1)]).cumprod().astype(np.int64)

    process_noise = rng.normal(0.0, config.sigma_epsilon, size=(steps, n))
    z = np.empty((steps, n))
    z[0] = rng.normal(size=n)
    for t in range(steps - 1):
        z[t + 1] = regime[t] * (A @ z[t]) + process_noise[t]
    x = z @ C.T + rng.normal(0.0, config.sigma_eta, size=(steps, m))
    return AntipodalSequence(
        x=x,
        z=z,
        regime=regime,
        transition=transition_mask(regime, config.window_radius, config.window),
        A=A,
        C=C,
        config=config,
    )


def split_bounds(length: int, fractions: tuple[float, float, float]) -> dict[str, tuple[int, int]]:
    """Chronological [start, stop) bounds of the train/val/test segments."""
    cuts = np.round(np.cumsum([0.0, *fractions]) * length).astype(int)
    return {name: (int(cuts[i]), int(cuts[i + 1])) for i, name in enumerate(SPLITS)}


def check_window_options(
    *, target_mode: str, history_length: int, stride: int, stateful: bool, augmentation: Augmentation
) -> None:
    """Refuses, in one sentence naming the key, windows the DataModule cannot cut."""
    if target_mode not in TARGET_MODES:
        raise ValueError(f"target_mode={target_mode!r} is not allowed; choose one of: {', '.join(TARGET_MODES)}.")
    if history_length < 1:
        raise ValueError(f"history_length={history_length} must be a positive integer.")
    if stride < 1:
        raise ValueError(f"stride={stride} must be a positive integer (1: a window at every step).")
    if stateful and target_mode != "next_step":
        raise ValueError(
            f"stateful=true carries the state from chunk to chunk and scores every step, so it "
            f"needs target_mode=next_step, not {target_mode!r}."
        )
    if stateful and augmentation.enabled:
        raise ValueError(
            "augmentation is not available with stateful=true: a shifted window would break the "
            "chunk-to-chunk continuity of the carried state; set data.augmentation.augmentation_prob=0."
        )
    if stateful and stride != 1:
        raise ValueError(
            f"stride={stride} has no effect with stateful=true, whose chunks never overlap; leave it at 1."
        )


def check_splits_hold_windows(
    bounds: dict[str, tuple[int, int]], *, history_length: int, batch_size: int, stateful: bool
) -> None:
    """Refuses splits too short for one window and its target (or, stateful, one chunk per batch row)."""
    shortest = min(stop - start for start, stop in bounds.values())
    if history_length + 1 > shortest:
        raise ValueError(
            f"history_length={history_length} is too long: a window and its target need "
            f"{history_length + 1} steps but the shortest split has {shortest} (raise generator.T or lower history_length)."
        )
    train_steps = bounds["train"][1] - bounds["train"][0]
    if stateful and train_steps < batch_size * history_length + 1:
        raise ValueError(
            f"stateful=true needs batch_size * history_length + 1 = {batch_size * history_length + 1} training "
            f"steps (one chunk per batch row) but the train split has {train_steps}; lower batch_size or "
            "history_length, or raise generator.T."
        )


class AntipodalWindows(Dataset):
    """Windows of `history_length` observations inside one segment [start, stop).

    A window covering steps s .. s+H-1 has its target at s+H (`last`) or at s+1 .. s+H
    (`next_step`); both need s+H < stop, so no window or target leaves its segment.
    Windows start every `stride` steps from `start`; with `next_step` and stride = H each target
    of the segment is predicted exactly once (the last (stop - start - 1) mod H are left out).
    `regime` and `transition` describe the target step(s).
    """

    def __init__(
        self, sequence: AntipodalSequence, start: int, stop: int, history_length: int, target_mode: str, stride: int = 1
    ):
        self.x = torch.as_tensor(sequence.x, dtype=torch.float32)
        self.regime = torch.as_tensor(sequence.regime, dtype=torch.float32)
        self.transition = torch.as_tensor(sequence.transition)
        self.starts = torch.arange(start, stop - history_length, stride)
        self.history_length = history_length
        self.target_mode = target_mode

    def __len__(self) -> int:
        return len(self.starts)

    def covered_steps(self) -> torch.Tensor:
        """Every time index that some window of this dataset reads, input or target."""
        if len(self.starts) == 0:
            return self.starts
        steps = self.starts[:, None] + torch.arange(self.history_length + 1)
        return torch.unique(steps)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The windows at `indices` as one batch, gathered in one indexing op per key (what
        default_collate would make of the windows one by one, without a Python call per window).
        The DataLoader hands it to data.epoch_sampling.collate_batches, which passes it through."""
        starts = self.starts[torch.as_tensor(indices, dtype=torch.long)]
        if self.target_mode == "last":
            target_starts, target_length = starts + self.history_length, None
        else:
            target_starts, target_length = starts + 1, self.history_length
        return {
            "x": gather_windows(self.x, starts, self.history_length),
            "y": gather_windows(self.x, target_starts, target_length),
            "regime": gather_windows(self.regime, target_starts, target_length),
            "transition": gather_windows(self.transition, target_starts, target_length),
        }


def gather_windows(series: torch.Tensor, starts: torch.Tensor, length: int | None) -> torch.Tensor:
    """series[s : s + length] for each s in `starts`, stacked; series[s] where length is None.

    One index_select of whole windows from a sliding-window view of the series copies each window
    as a block; indexing every step of every window through a (B, length) index tensor made a
    batch of 64 windows of 500 steps take 0.38 ms to load instead of 0.06 ms."""
    windows = series if length is None else series.unfold(0, length, 1).movedim(-1, 1)
    return windows.index_select(0, starts)


class StatefulChunks(AntipodalWindows):
    """The segment [start, stop) as `rows` contiguous streams, each cut into consecutive chunks of
    `history_length` steps with next-step targets, ordered so that batch k of a loader with
    batch_size = rows (in order, not shuffled) holds chunk k of every stream.

    Row r reads steps start + r n .. start + (r + 1) n (n = (stop - start - 1) // rows rounded down
    to whole chunks), so the state a recurrent model ends batch k with is the right start state of
    batch k + 1 (truncated backprop through time); every target is predicted once per epoch.
    """

    def __init__(self, sequence: AntipodalSequence, start: int, stop: int, history_length: int, rows: int):
        chunks_per_row = (stop - start - 1) // rows // history_length
        super().__init__(sequence, start, stop, history_length, "next_step")
        row_starts = start + torch.arange(rows) * chunks_per_row * history_length
        chunk_offsets = torch.arange(chunks_per_row) * history_length
        # Index k * rows + r is chunk k of row r.
        self.starts = (chunk_offsets[:, None] + row_starts[None, :]).reshape(-1)


class AntipodalDataModule(SplitDataModule):
    """Seeded antipodal regime-switching data, split chronologically into train/val/test.

    Declares the task contract of docs/model_contract.md: `task`, `input_dim`, `output_dim` and
    `target_mode`; batches are dicts with `x`, `y`, `regime` and `transition`. `augmentation`
    (noise_std, max_shift, augmentation_prob; data/augmentation.py) applies to training batches only.
    """

    task = "regression"

    def __init__(
        self,
        generator: dict | AntipodalProcessConfig | None = None,
        history_length: int = 10,
        target_mode: str = "last",
        split: tuple[float, float, float] = (0.6, 0.2, 0.2),
        batch_size: int = 64,
        num_workers: int = 0,
        augmentation: dict | Augmentation | None = None,
        stride: int = 1,
        stateful: bool = False,
    ) -> None:
        super().__init__()
        self.augmentation = (
            augmentation if isinstance(augmentation, Augmentation) else Augmentation(**(augmentation or {}))
        )
        process = (
            generator if isinstance(generator, AntipodalProcessConfig) else AntipodalProcessConfig(**(generator or {}))
        )
        split = checked_split(split, batch_size, num_workers)
        check_window_options(
            target_mode=target_mode,
            history_length=history_length,
            stride=stride,
            stateful=stateful,
            augmentation=self.augmentation,
        )
        self.bounds = split_bounds(process.T, split)
        check_splits_hold_windows(self.bounds, history_length=history_length, batch_size=batch_size, stateful=stateful)
        self.process = process
        self.history_length = history_length
        self.target_mode = target_mode
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.stride = stride
        self.stateful = stateful
        self.seed = process.seed  # one seed draws the data and the training order
        self.input_dim = self.output_dim = process.obs_dim
        self.save_hyperparameters(
            {
                "generator": asdict(process),
                "history_length": history_length,
                "target_mode": target_mode,
                "split": list(split),
                "batch_size": batch_size,
                "augmentation": asdict(self.augmentation),
                "stride": stride,
                "stateful": stateful,
            }
        )
        self.sequence: AntipodalSequence | None = None
        self.datasets: dict[str, AntipodalWindows] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.sequence is None:
            self.sequence = generate_antipodal(self.process)
            # stride and stateful reshape the training windows only: evaluation keeps a window at
            # every step, so metrics stay comparable between runs that train either way.
            self.datasets = {
                name: AntipodalWindows(self.sequence, start, stop, self.history_length, self.target_mode)
                for name, (start, stop) in self.bounds.items()
            }
            start, stop = self.bounds["train"]
            if self.stateful:
                self.datasets["train"] = StatefulChunks(
                    self.sequence, start, stop, self.history_length, self.batch_size
                )
            elif self.stride > 1:
                self.datasets["train"] = AntipodalWindows(
                    self.sequence, start, stop, self.history_length, self.target_mode, self.stride
                )

    def reference_process(self) -> dict[str, object]:
        """The true parameters of the generating process, for reference filters such as hamilton_imm."""
        self.setup()
        return {
            "A": self.sequence.A.tolist(),
            "C": self.sequence.C.tolist(),
            "p_switch": self.process.p_switch,
            "sigma_epsilon": self.process.sigma_epsilon,
            "sigma_eta": self.process.sigma_eta,
        }

    def train_dataloader(self) -> DataLoader:
        if self.stateful:
            # Stateful chunks must arrive in order: batch k + 1 continues the streams of batch k.
            return self._loader("train", shuffle=False)
        # Augmentation (data/augmentation.py) touches the training split only.
        return train_loader(self.datasets["train"], self.augmentation, self.batch_size, self.seed, self.num_workers)
