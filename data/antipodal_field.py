"""The antipodal process rendered as a small 2-D field per step (`data=antipodal_field`, for ConvGRU).

The process is the one of data/antipodal.py (same generator, seed, regimes and transition steps).
Each observation x_t (obs_dim values) becomes a field of `channels` x S x S pixels,
    F_t = sum_k x_t[k] B_k + xi_t,   xi_t ~ N(0, pixel_noise^2) per pixel,
where B_1 .. B_obs_dim are fixed smooth basis maps: white noise blurred by a Gaussian of
`basis_length_scale` pixels on the periodic grid, each scaled to unit RMS, drawn from the seed.
Windows and the chronological split are those of the vector data; the target is the next field or
the next observation vector x, and regime and transition flags describe the target steps as there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from data.antipodal import (
    AntipodalDataModule,
    AntipodalProcessConfig,
    AntipodalSequence,
    AntipodalWindows,
    generate_antipodal,
)

TARGETS = ("field", "observation")
# Entropy mixed with the seed for the basis maps and pixel noise, so they are independent of the
# generator's own draws (which use the seed alone).
FIELD_STREAM = 0xF1E1D


def smooth_basis_maps(
    count: int, channels: int, grid_size: int, length_scale: float, rng: np.random.Generator
) -> np.ndarray:
    """`count` smooth maps (count, channels, S, S): blurred white noise, periodic, unit RMS each."""
    noise = rng.standard_normal((count, channels, grid_size, grid_size))
    maps = gaussian_filter(noise, sigma=(0, 0, length_scale, length_scale), mode="wrap")
    rms = np.sqrt((maps**2).mean(axis=(1, 2, 3), keepdims=True))
    return (maps / rms).astype(np.float32)


def render_fields(
    observations: np.ndarray, basis: np.ndarray, pixel_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Fields (T, channels, S, S) = sum_k observations[:, k] basis[k] + N(0, pixel_noise^2) per pixel."""
    fields = np.einsum("tk,kchw->tchw", observations.astype(np.float32), basis)
    if pixel_noise > 0:
        fields += pixel_noise * rng.standard_normal(fields.shape, dtype=np.float32)
    return fields


@dataclass(frozen=True)
class AntipodalFieldSequence:
    """One rendered trajectory: `x` holds the fields (the model inputs), `process` the vector sequence."""

    x: np.ndarray  # (T, channels, S, S) float32 fields
    basis: np.ndarray  # (obs_dim, channels, S, S)
    process: AntipodalSequence = field(repr=False)

    @property
    def observations(self) -> np.ndarray:
        """(T, obs_dim): the vector x_t that field t renders."""
        return self.process.x

    @property
    def regime(self) -> np.ndarray:
        return self.process.regime

    @property
    def transition(self) -> np.ndarray:
        return self.process.transition

    @property
    def switch_steps(self) -> np.ndarray:
        return self.process.switch_steps


def generate_antipodal_field(
    process: AntipodalProcessConfig,
    grid_size: int = 16,
    channels: int = 1,
    basis_length_scale: float = 2.0,
    pixel_noise: float = 0.05,
) -> AntipodalFieldSequence:
    """Draw the antipodal trajectory of `process` and render it; the same arguments give the same arrays."""
    rng = np.random.default_rng((process.seed, FIELD_STREAM))
    sequence = generate_antipodal(process)
    basis = smooth_basis_maps(process.obs_dim, channels, grid_size, basis_length_scale, rng)
    return AntipodalFieldSequence(x=render_fields(sequence.x, basis, pixel_noise, rng), basis=basis, process=sequence)


class AntipodalFieldWindows(AntipodalWindows):
    """Windows of fields; the targets are the next fields, or the observation vectors x at the same
    steps (read from windows over the vector sequence with identical starts)."""

    def __init__(
        self,
        sequence: AntipodalFieldSequence,
        start: int,
        stop: int,
        history_length: int,
        target_mode: str,
        target: str,
        stride: int = 1,
    ) -> None:
        super().__init__(sequence, start, stop, history_length, target_mode, stride)
        self.observation_windows = (
            AntipodalWindows(sequence.process, start, stop, history_length, target_mode, stride)
            if target == "observation"
            else None
        )

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(indices)
        if self.observation_windows is not None:
            batch["y"] = self.observation_windows.__getitems__(indices)["y"]
        return batch


class AntipodalFieldDataModule(AntipodalDataModule):
    """The antipodal DataModule with fields as inputs: declares `input_shape` = (channels, S, S)
    (no input_dim), `output_dim` (channels * S * S for target=field, obs_dim for target=observation),
    `task` = regression and `target_mode`; batches hold x (B, H, channels, S, S), y, regime and transition.

    Args:
        generator, history_length, target_mode, split, batch_size, num_workers, augmentation, stride: as
            AntipodalDataModule (noise is added per pixel; stride thins the training windows).
        stateful: must stay false: no model that reads fields carries its state between batches.
        grid_size: S.
        channels: channels per field.
        basis_length_scale: blur (pixels) of the basis maps; larger is smoother.
        pixel_noise: std of the per-pixel noise.
        target: `field` (the next field) or `observation` (the next vector x).

    The defaults here are the process's own; configs/data/antipodal_field.yaml raises the process
    noise 30x, shortens T and predicts at every step, so that convgru has something to learn.
    """

    def __init__(
        self,
        generator: dict | AntipodalProcessConfig | None = None,
        history_length: int = 10,
        target_mode: str = "last",
        split: tuple[float, float, float] = (0.6, 0.2, 0.2),
        batch_size: int = 64,
        num_workers: int = 0,
        grid_size: int = 16,
        channels: int = 1,
        basis_length_scale: float = 2.0,
        pixel_noise: float = 0.05,
        target: str = "field",
        augmentation: dict | None = None,
        stride: int = 1,
        stateful: bool = False,
    ) -> None:
        if stateful:
            raise ValueError(
                "stateful=true is not available for field data: no model that reads fields carries its "
                "state between batches; use stride=history_length with target_mode=next_step instead."
            )
        super().__init__(generator, history_length, target_mode, split, batch_size, num_workers, augmentation, stride)
        if grid_size < 1:
            raise ValueError(f"grid_size={grid_size} must be a positive integer.")
        if channels < 1:
            raise ValueError(f"channels={channels} must be a positive integer.")
        if channels * grid_size**2 <= self.process.obs_dim:
            # Fewer values than x has cannot hold x; ConvGRU also tells a field target from a vector
            # target by output_dim = channels * S * S, which must not equal obs_dim.
            raise ValueError(
                f"grid_size={grid_size} gives {channels * grid_size**2} values per field, which must "
                f"exceed generator.obs_dim={self.process.obs_dim}; raise grid_size or channels."
            )
        if basis_length_scale <= 0:
            raise ValueError(f"basis_length_scale={basis_length_scale} must be > 0 (pixels).")
        if pixel_noise < 0:
            raise ValueError(f"pixel_noise={pixel_noise} must be >= 0.")
        if target not in TARGETS:
            raise ValueError(f"target={target!r} is not allowed; choose one of: {', '.join(TARGETS)}.")
        self.grid_size, self.channels = grid_size, channels
        self.basis_length_scale, self.pixel_noise, self.target = basis_length_scale, pixel_noise, target
        self.input_dim = None  # fields are described by input_shape alone
        self.input_shape = (channels, grid_size, grid_size)
        self.output_dim = channels * grid_size**2 if target == "field" else self.process.obs_dim
        self.save_hyperparameters(
            {
                **self.hparams,
                "grid_size": grid_size,
                "channels": channels,
                "basis_length_scale": basis_length_scale,
                "pixel_noise": pixel_noise,
                "target": target,
            }
        )

    def setup(self, stage: str | None = None) -> None:
        if self.sequence is None:
            self.sequence = generate_antipodal_field(
                self.process, self.grid_size, self.channels, self.basis_length_scale, self.pixel_noise
            )
            # As for the vector data, stride thins the training windows only.
            self.datasets = {
                name: AntipodalFieldWindows(
                    self.sequence,
                    start,
                    stop,
                    self.history_length,
                    self.target_mode,
                    self.target,
                    self.stride if name == "train" else 1,
                )
                for name, (start, stop) in self.bounds.items()
            }
