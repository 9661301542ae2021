"""The host allocator during training: glibc keeps freed memory for the next step (trainer.keep_freed_memory).

A training step frees its activations and gradients and allocates them again in the next step.
glibc serves blocks above its mmap threshold from fresh mappings and hands the free top of its heap
back to the system once it passes its trim threshold (both adapt to the largest block freed, the
first up to 32 MiB). So a step can fault in again, page by page, memory the step before returned.
Fixing both thresholds keeps that memory in the process, at the cost of resident memory staying
at the run's peak, which a training step reaches again every step. Measured (docs/speed.md): the
faults cost 3-4 ms of a 21 ms z2_delta train step at T=1000, and with the memory kept a z2_seam run
on long windows trained 16 % more samples per second.

Only glibc has these settings (Linux); elsewhere nothing changes. glibc cannot go back to its
adaptive thresholds, so once set they hold for the rest of the process.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

import pytorch_lightning as pl

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit: blocks below it come from the heap.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# mallopt takes an int: up to 2 GiB of free heap top stays in the process.
TRIM_THRESHOLD_BYTES = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc (it has gnu_get_libc_version and mallopt), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


@functools.cache
def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds so that freed memory stays for reuse; False, after one
    logged line, where the C library is not glibc (then nothing changes), and False where glibc
    refuses. Once per process."""
    libc = _glibc()
    if libc is None:
        log.info("keep_freed_memory: the C library is not glibc; its allocator keeps its own defaults.")
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


class KeepFreedMemory(pl.Callback):
    """Applies keep_freed_memory at a fit's (test's, ...) setup, in every rank's process.
    create_trainer adds it (trainer.keep_freed_memory)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        keep_freed_memory()
