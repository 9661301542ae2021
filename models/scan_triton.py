"""Load and self-check the Triton scan kernels of models/scan_triton_kernels.py for CUDA tensors.

Triton is optional (`pip install -e ".[gpu]"`). ``kernel()`` returns None silently where triton is
not installed or no CUDA device is present, and None after one logged line where the kernels fail
to compile or disagree with the reference on the device; the caller then uses the eager scan.
``SEAM_SCAN_KERNEL=eager`` skips it on purpose, as it does the CPU kernel.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
from functools import cache
from types import ModuleType

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# A tile of 64 steps by 32 channels: each of its rows is one coalesced 128-byte line in float32, and a
# program has 64 of them in flight per input. Not yet tuned on a GPU (none has been available).
BLOCK_T = 64
BLOCK_H = 32
_NUM_WARPS = 4


class TritonScan:
    """The kernels' forward and backward on contiguous (B, T, H) float32/float64 tensors of one device."""

    def __init__(self, kernels: ModuleType) -> None:
        self._kernels = kernels

    def forward(self, a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        """All states h (B, T, H) of h_t = a_t h_{t-1} + b_t; inputs contiguous, one dtype."""
        h = torch.empty_like(b)
        B, T, H = b.shape
        with _on_device(b):
            # With HAS_H0 false the h0 argument is never read; b stands in for the missing tensor.
            self._kernels.scan_forward[_grid(B, H)](
                a,
                b,
                b if h0 is None else h0,
                h,
                T,
                H,
                HAS_H0=h0 is not None,
                BLOCK_T=BLOCK_T,
                BLOCK_H=BLOCK_H,
                num_warps=_NUM_WARPS,
            )
        return h

    def backward(
        self, a: Tensor, h: Tensor, h0: Tensor | None, grad_h: Tensor, need_a: bool
    ) -> tuple[Tensor, Tensor | None]:
        """(grad_b, grad_a or None) of the scan, in one reverse pass."""
        grad_b = torch.empty_like(h)
        grad_a = torch.empty_like(h) if need_a else None
        B, T, H = h.shape
        with _on_device(h):
            # Arguments switched off by HAS_H0 / NEED_A are never touched; grad_b stands in for them.
            self._kernels.scan_backward[_grid(B, H)](
                a,
                h,
                grad_b if h0 is None else h0,
                grad_h,
                grad_b,
                grad_b if grad_a is None else grad_a,
                T,
                H,
                HAS_H0=h0 is not None,
                NEED_A=need_a,
                BLOCK_T=BLOCK_T,
                BLOCK_H=BLOCK_H,
                num_warps=_NUM_WARPS,
            )
        return grad_b, grad_a


def _grid(B: int, H: int) -> tuple[int, int]:
    return B, -(-H // BLOCK_H)


def _on_device(x: Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device, so make it x's; CPU tensors (the interpreter) need none."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def self_check(candidate: TritonScan, device: torch.device) -> None:
    """The reference check of models/scan.py on `device`, over three time tiles, the last one partial,
    and two channel blocks, the second one partly masked; raises RuntimeError on a mismatch."""
    from models.scan import check_backend_against_reference  # scan.py imports this module

    check_backend_against_reference(candidate, device, steps=2 * BLOCK_T + 5, channels=BLOCK_H + 5)


@cache
def kernel() -> TritonScan | None:
    """The checked Triton scan for CUDA tensors, or None: silently without triton or CUDA, or where
    ``SEAM_SCAN_KERNEL=eager``; after one logged line where compiling or the self-check fails."""
    if os.environ.get("SEAM_SCAN_KERNEL", "").lower() == "eager":
        return None
    if importlib.util.find_spec("triton") is None or not torch.cuda.is_available():
        return None
    try:
        candidate = TritonScan(importlib.import_module("models.scan_triton_kernels"))
        self_check(candidate, torch.device("cuda"))
    # Triton raises many kinds of errors (compilation, out of resources, driver); each means: eager.
    except Exception as error:
        log.warning("linear_scan: Triton scan kernel unavailable (%s); using the eager chunked scan.", error)
        return None
    return candidate
