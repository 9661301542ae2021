"""Load and self-check the fused CPU scan kernel of models/scan_kernel.cpp.

models/cpu_kernel_build.py compiles it at first use and caches it per machine. ``kernel()``
returns None, after one logged line, wherever the kernel cannot be built or disagrees with the
reference; the caller then uses the eager scan. ``SEAM_SCAN_KERNEL=eager`` skips the kernel on purpose.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from models.cpu_kernel_build import load_checked

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("scan_kernel.cpp")
_POINTER, _INT64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
# Outputs of at least this size are written past the caches (models/scan_kernel.cpp). On the
# project's CPU (32 MiB L3) streaming made fwd+bwd 27-35 % faster from 8 MiB tensors up and lost
# below about 1 MiB, where the outputs stay cached for the next op (docs/speed.md).
STREAM_BYTES = 4 << 20


class ScanKernel:
    """The loaded library's forward and backward on contiguous CPU (B, T, H) float32/float64 tensors."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._forward, self._backward = {}, {}
        for suffix in _SUFFIX.values():
            forward = getattr(library, f"scan_forward_{suffix}")
            forward.argtypes = [_POINTER] * 4 + [_INT64] * 3 + [_INT] * 2
            forward.restype = None
            backward = getattr(library, f"scan_backward_{suffix}")
            backward.argtypes = [_POINTER] * 6 + [_INT64] * 3 + [_INT] * 2
            backward.restype = None
            self._forward[suffix], self._backward[suffix] = forward, backward

    def forward(self, a: Tensor, b: Tensor, h0: Tensor | None, stream: bool | None = None) -> Tensor:
        """All states h (B, T, H) of h_t = a_t h_{t-1} + b_t; inputs contiguous, one dtype.

        `stream` writes h past the caches (None: where streams_outputs says so)."""
        h = torch.empty_like(b)
        B, T, H = b.shape
        stream = streams_outputs(b) if stream is None else stream
        self._forward[_SUFFIX[b.dtype]](
            a.data_ptr(), b.data_ptr(), _pointer(h0), h.data_ptr(), B, T, H, torch.get_num_threads(), stream
        )
        return h

    def backward(
        self, a: Tensor, h: Tensor, h0: Tensor | None, grad_h: Tensor, need_a: bool, stream: bool | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(grad_b, grad_a or None) of the scan, in one reverse pass; `stream` as in forward."""
        grad_b = torch.empty_like(h)
        grad_a = torch.empty_like(h) if need_a else None
        B, T, H = h.shape
        stream = streams_outputs(h) if stream is None else stream
        self._backward[_SUFFIX[h.dtype]](
            a.data_ptr(),
            h.data_ptr(),
            _pointer(h0),
            grad_h.data_ptr(),
            grad_b.data_ptr(),
            _pointer(grad_a),
            B,
            T,
            H,
            torch.get_num_threads(),
            stream,
        )
        return grad_b, grad_a


def streams_outputs(x: Tensor) -> bool:
    """Whether the kernel writes outputs shaped like x with non-temporal stores."""
    return x.numel() * x.element_size() >= STREAM_BYTES


def _pointer(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _self_check(candidate: ScanKernel) -> None:
    from models.scan import check_backend_against_reference  # scan.py imports this module

    streaming = SimpleNamespace(
        forward=functools.partial(candidate.forward, stream=True),
        backward=functools.partial(candidate.backward, stream=True),
    )
    for backend in (candidate, streaming):
        check_backend_against_reference(backend, torch.device("cpu"), channels=5)


@functools.cache
def kernel() -> ScanKernel | None:
    """The fused CPU kernel, or None (logged once) where it cannot be built or is switched off."""
    return load_checked(
        SOURCE, ScanKernel, _self_check, "SEAM_SCAN_KERNEL", log, "linear_scan", "the eager chunked scan"
    )
