"""create_trainer: a Lightning Trainer with the project's device, precision, denormal and host-memory
rules applied, checkpoints written atomically and no profiling cost unless a profiler is asked for."""

from __future__ import annotations

import contextlib
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import CheckpointIO
from pytorch_lightning.profilers import PassThroughProfiler, Profiler

from models.contract import OptionError
from training.checkpoint_io import AtomicCheckpointIO
from training.floating_point import FlushDenormals
from training.host_memory import KeepFreedMemory

GPU_ACCELERATORS = {"gpu": "a CUDA or Apple MPS GPU", "cuda": "a CUDA GPU", "mps": "an Apple MPS GPU"}


class NoProfiler(PassThroughProfiler):
    """What `profiler=None` means to Lightning (its PassThroughProfiler), without the cost.

    Lightning enters `trainer.profiler.profile(...)` around each of the ~60 hook calls of a training
    step. PassThroughProfiler inherits a generator-based context manager for it, about 3 us per call
    on the project's CPU, 2-3 % of a default training step (docs/speed.md); this returns one shared
    no-op context instead.
    """

    _NO_OP = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._NO_OP


def resolve_accelerator(accelerator: str) -> str:
    """`auto` picks CUDA, then MPS, then CPU; a GPU that this machine lacks is refused in one
    sentence; anything else is passed to Lightning unchanged."""
    available = {
        "gpu": torch.cuda.is_available() or torch.backends.mps.is_available(),
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(accelerator, True):
        raise OptionError(
            "accelerator",
            f"accelerator={accelerator!r} needs {GPU_ACCELERATORS[accelerator]}, and this "
            "machine has none; use accelerator='auto' (the GPU when there is one, else the CPU) or "
            "'cpu' (trainer.accelerator=... on the command line).",
        )
    if accelerator != "auto":
        return accelerator
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str | int, accelerator: str) -> str:
    """`auto`: bf16-mixed on CUDA with bf16, 16-mixed on older CUDA, 32-true on MPS and CPU.

    An explicit choice is kept; Lightning itself swaps 16-mixed for bf16-mixed on CPU with one
    warning, since fp16 autocast is not supported there.
    """
    precision = str(precision)
    if precision != "auto":
        return precision
    if accelerator in ("cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def create_trainer(
    max_epochs: int = 20,
    accelerator: str = "auto",
    precision: str | int = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    callbacks: list[pl.Callback] | pl.Callback | None = None,
    logger: Any = True,
    flush_denormal: bool = True,
    keep_freed_memory: bool = True,
    profiler: Profiler | str | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """A Lightning Trainer with the project's `auto` device and precision rules applied and
    checkpoints written atomically; with `flush_denormal`, the CPU flushes denormal floats to zero
    while it trains or evaluates (training/floating_point.py); with `keep_freed_memory`, glibc keeps
    freed memory for the next step (training/host_memory.py). Without a `profiler` (debug=profiler
    sets one), hooks run under NoProfiler."""
    accelerator = resolve_accelerator(accelerator)
    callbacks = [callbacks] if isinstance(callbacks, pl.Callback) else list(callbacks or [])
    if flush_denormal:
        callbacks.append(FlushDenormals())
    if keep_freed_memory:
        callbacks.append(KeepFreedMemory())
    plugins = list(trainer_kwargs.pop("plugins", None) or [])
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        precision=resolve_precision(precision, accelerator),
        devices=devices,
        strategy=strategy,
        callbacks=callbacks,
        logger=logger,
        plugins=plugins,
        profiler=profiler or NoProfiler(),
        **trainer_kwargs,
    )
