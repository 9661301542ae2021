"""Atomic file writes: every checkpoint, report and diagnostics file of a run goes through
`atomic_write`, so a crash or a full disk mid-write leaves the previous file whole instead of
truncated."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temporary file beside `path`, flush it to disk, then rename it into place.

    A rename within one directory is atomic on POSIX and Windows: a reader sees the old file or
    the new one, never half of one. The temporary file is removed if `write` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write` of a UTF-8 text file."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with every checkpoint written through `atomic_write`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda file: torch.save(checkpoint, file))
