"""Build, cache and load the project's fused CPU kernels (models/*_kernel.cpp), shared by every kernel.

Each kernel is plain C++ behind a C ABI (no torch headers), so it compiles in about a second with
the system's C++ compiler the first time a process needs it. The library is cached per machine in
a user cache directory (``$SEAM_SCAN_CACHE``, the cache of every kernel despite its name, else
``$XDG_CACHE_HOME/seam-gated-rnn``, else ``~/.cache/seam-gated-rnn``), named by the source's stem
and a hash of the source (with the headers beside it), compiler and flags, so an edit rebuilds it and concurrent processes never
read a half-written file. ``load_checked`` returns None, after one logged line, wherever a kernel
cannot be built or disagrees with its reference; the caller then takes its eager path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

# -fno-trapping-math lets branch-free clamps (a kernel's exp) vectorise; it changes no result.
FLAGS = ("-O3", "-std=c++14", "-fno-trapping-math", "-shared", "-fPIC", "-pthread")
OPENMP = "-fopenmp"

Kernel = TypeVar("Kernel")


def cache_dir() -> Path:
    if os.environ.get("SEAM_SCAN_CACHE"):
        return Path(os.environ["SEAM_SCAN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seam-gated-rnn"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def vector_flags() -> tuple[str, ...]:
    """The widest vector instructions the kernels may use: those torch itself dispatches to on this CPU.

    They are part of the flags and so of the cache key: a cache shared with an older CPU keeps a
    separate library for it."""
    return ("-mavx2", "-mfma") if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else ()


def build_library(source: Path) -> Path:
    """Compile `source` into the cache (once per source, compiler and flags) and return the library's path.

    With OpenMP where the compiler has it: the kernels then run on torch's own thread pool (the
    process has loaded that libgomp already), where threads of their own would wait for cores that
    torch's idle workers are still spinning on. Elsewhere (Apple clang) they start std::threads."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++/clang++)")
    flags = (*FLAGS, *vector_flags())
    try:
        return _build(cxx, source, (*flags, OPENMP))
    except RuntimeError:
        return _build(cxx, source, flags)


def _build(cxx: str, source: Path, flags: tuple[str, ...]) -> Path:
    # The headers next to the source are part of it (the kernels share their threading).
    text = source.read_bytes() + b"".join(header.read_bytes() for header in sorted(source.parent.glob("*.h")))
    key = hashlib.sha256(text + cxx.encode() + " ".join(flags).encode() + sys.platform.encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a unique name and rename into place, so a reader never sees a partial file.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run(
            [cxx, *flags, str(source), "-o", partial], check=False, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {result.stderr.strip()[-500:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def load_checked(
    source: Path,
    wrap: Callable[[ctypes.CDLL], Kernel],
    self_check: Callable[[Kernel], None],
    switch: str,
    log: logging.Logger,
    op: str,
    fallback: str,
) -> Kernel | None:
    """The kernel of `source`, built, loaded by `wrap` and passed through `self_check` (which raises
    RuntimeError on a mismatch); None where the environment variable `switch` is ``eager``, and None
    after one warning naming `op`, the reason and the `fallback` wherever a step fails."""
    if os.environ.get(switch, "").lower() == "eager":
        return None
    try:
        candidate = wrap(ctypes.CDLL(str(build_library(source))))
        # The check differentiates; the first call of a kernel may come under no_grad or inference mode.
        with torch.inference_mode(False), torch.enable_grad():
            self_check(candidate)
    # Any build, load or check failure means: use the eager path.
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as error:
        log.warning("%s: fused CPU kernel unavailable (%s); using %s.", op, error, fallback)
        return None
    return candidate
