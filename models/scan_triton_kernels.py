"""Triton kernels of the linear scan h_t = a_t * h_{t-1} + b_t, forward and reverse-time backward.

Imports triton at the top: only models/scan_triton.py imports this module, lazily, so triton stays
an optional dependency. Each program owns one batch row and one block of BLOCK_H channels of
contiguous (B, T, H) tensors and walks time sequentially, like models/scan_kernel.cpp: every element
is read or written once (the op is memory-bound), and the arithmetic is the reference loop's
multiply-add, exact up to rounding for any real decay.

Set TRITON_INTERPRET=1 before this module is imported to run the kernels on CPU tensors under
Triton's interpreter. The kernels call only builtins of triton.language, none of its @jit helpers
(tl.zeros is one): those are decorated when triton itself is imported, so they would not run under
the interpreter in a process that imported triton before setting the variable.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def scan_forward(a_ptr, b_ptr, h0_ptr, h_ptr, T, H, HAS_H0: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: B * T * H may pass 2**31
    channels = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    inside = channels < H
    if HAS_H0:
        state = tl.load(h0_ptr + row * H + channels, mask=inside, other=0.0)
    else:
        state = tl.full([BLOCK_H], 0, h_ptr.dtype.element_ty)
    offsets = row * T * H + channels
    for _ in range(T):
        a = tl.load(a_ptr + offsets, mask=inside, other=0.0)
        b = tl.load(b_ptr + offsets, mask=inside, other=0.0)
        state = a * state + b
        tl.store(h_ptr + offsets, state, mask=inside)
        offsets += H


@triton.jit
def scan_backward(
    a_ptr,
    h_ptr,
    h0_ptr,
    grad_h_ptr,
    grad_b_ptr,
    grad_a_ptr,
    T,
    H,
    HAS_H0: tl.constexpr,
    NEED_A: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # d_t = g_t + a_{t+1} d_{t+1} (d_{T-1} = g_{T-1}) is grad_b; grad_a_t = d_t h_{t-1}, h_{-1} = h0 or 0.
    row = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    inside = channels < H
    zero = tl.full([BLOCK_H], 0, h_ptr.dtype.element_ty)
    if HAS_H0:
        h_start = tl.load(h0_ptr + row * H + channels, mask=inside, other=0.0)
    else:
        h_start = zero
    d_next = zero
    a_next = zero
    first = row * T * H + channels  # the offsets of t = 0
    offsets = first + (T - 1) * H
    for _ in range(T):
        d = tl.load(grad_h_ptr + offsets, mask=inside, other=0.0) + a_next * d_next
        tl.store(grad_b_ptr + offsets, d, mask=inside)
        if NEED_A:
            after_first = offsets > first
            h_prev = tl.load(h_ptr + offsets - H, mask=inside & after_first, other=0.0)
            tl.store(grad_a_ptr + offsets, d * tl.where(after_first, h_prev, h_start), mask=inside)
        # a_t is read once, here, and used one step later as the coefficient of d_{t-1}.
        a_next = tl.load(a_ptr + offsets, mask=inside, other=0.0)
        d_next = d
        offsets -= H
