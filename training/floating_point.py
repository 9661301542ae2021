"""The CPU's denormal mode during training: flush denormal floats to zero (trainer.flush_denormal).

Late in training, saturated gates leave gradients below float32's smallest normal value (1.2e-38).
x86 CPUs compute on such denormals through a microcode path several times slower, so an epoch of
z2_delta on long windows grew from 3.5 s to 11 s by the tenth epoch (docs/speed.md). Flushing them
to zero changes no value above 1e-38, and CUDA GPUs have no such slow path, so the default trains
with it on.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import subprocess
from pathlib import Path

import pytorch_lightning as pl
import torch

from models.cpu_kernel_build import build_library

log = logging.getLogger(__name__)

HELPER_SOURCE = Path(__file__).with_name("denormals.cpp")


def denormals_flushed() -> bool:
    """Whether the calling thread flushes denormal results to zero (half the smallest normal float32 is
    a denormal, which only a flushing CPU rounds to zero)."""
    return (torch.tensor(torch.finfo(torch.float32).tiny) / 2).item() == 0.0


@functools.cache
def _team_helper() -> ctypes.CDLL | None:
    """training/denormals.cpp, built like the fused kernels; None, after one logged line, where it cannot be."""
    try:
        return ctypes.CDLL(str(build_library(HELPER_SOURCE)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.warning("flush_denormal: no helper for torch's worker threads (%s); only the main thread flushes.", error)
        return None


def flush_denormals(enabled: bool) -> bool:
    """Turn flushing of denormals to zero on or off, on the calling thread and on torch's intra-op
    worker threads; False where the CPU has no such mode (then nothing changes)."""
    if not torch.set_flush_denormal(enabled):
        return False
    team = _team_helper()
    if team is not None:
        team.set_flush_denormal_on_team(int(enabled))
    return True


class FlushDenormals(pl.Callback):
    """Flushes denormals to zero from a fit's (test's, ...) setup to its teardown, in every rank's
    process, then restores the mode the process had. create_trainer adds it (trainer.flush_denormal)."""

    def __init__(self) -> None:
        self._previous: bool | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._previous = denormals_flushed()
        if not flush_denormals(True):
            log.info("flush_denormal: this CPU has no flush-to-zero mode; denormals are kept.")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None:
            flush_denormals(self._previous)
            self._previous = None
