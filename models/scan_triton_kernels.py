"""Triton kernels of the linear scan h_t = a_t * h_{t-1} + b_t, forward and reverse-time backward.

Imports triton at the top: only models/scan_triton.py imports this module, lazily, so triton stays
an optional dependency. Each program owns one batch row and one block of BLOCK_H channels of
contiguous (B, T, H) tensors and walks time in tiles of BLOCK_T steps: it loads a whole
(BLOCK_T, BLOCK_H) tile of each input at once, so that many loads are in flight (a step at a time,
a program has one 128-byte line of each input in flight, and the op is memory-bound), solves the
tile's recurrence with an associative scan over (decay, value) pairs, and carries the tile's last
state into the next tile. Every element is read or written once. The pair combine is the
recurrence's own multiply-add, exact up to rounding for any real decay; only the order of the
roundings differs from the reference loop's.

The backward walks the tiles from the end, each tile loaded in reverse time order, so the same
forward scan solves d_t = g_t + a_{t+1} d_{t+1}.

Set TRITON_INTERPRET=1 before this module is imported to run the kernels on CPU tensors under
Triton's interpreter. The kernels call only builtins of triton.language and the @jit combines
below, none of triton.language's own @jit helpers (tl.sum and tl.zeros are two): those are decorated
when triton itself is imported, so they would not run under the interpreter in a process that
imported triton before setting the variable.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _follow(decay_before, value_before, decay, value):
    """The pair of two consecutive steps of the recurrence: applying (decay, value) after
    (decay_before, value_before)."""
    return decay_before * decay, decay * value_before + value


@triton.jit
def _add(x, y):
    return x + y


@triton.jit
def _row(tile, rows, index):
    """Row `index` of a (BLOCK_T, BLOCK_H) tile, as a (BLOCK_H,) vector."""
    return tl.reduce(tl.where(rows[:, None] == index, tile, 0.0), 0, _add)


@triton.jit
def scan_forward(a_ptr, b_ptr, h0_ptr, h_ptr, T, H, HAS_H0: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: B * T * H may pass 2**31
    channels = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    inside = channels < H
    rows = tl.arange(0, BLOCK_T)
    if HAS_H0:
        state = tl.load(h0_ptr + row * H + channels, mask=inside, other=0.0)
    else:
        state = tl.full([BLOCK_H], 0, h_ptr.dtype.element_ty)
    base = row * T * H + channels[None, :]
    for start in range(0, T, BLOCK_T):
        t = start + rows[:, None]
        mask = (t < T) & inside[None, :]
        offsets = base + t * H
        # Steps past T decay by 1 and add 0, so the tile's last row holds the state at its last real step.
        a = tl.load(a_ptr + offsets, mask=mask, other=1.0)
        b = tl.load(b_ptr + offsets, mask=mask, other=0.0)
        decay, value = tl.associative_scan((a, b), 0, _follow)
        h = value + decay * state[None, :]
        tl.store(h_ptr + offsets, h, mask=mask)
        state = _row(h, rows, BLOCK_T - 1)


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
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # d_t = g_t + a_{t+1} d_{t+1} (d_{T-1} = g_{T-1}) is grad_b; grad_a_t = d_t h_{t-1}, h_{-1} = h0 or 0.
    row = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    inside = channels < H
    rows = tl.arange(0, BLOCK_T)
    if HAS_H0:
        h_start = tl.load(h0_ptr + row * H + channels, mask=inside, other=0.0)
    else:
        h_start = tl.full([BLOCK_H], 0, h_ptr.dtype.element_ty)
    d_after = tl.full([BLOCK_H], 0, h_ptr.dtype.element_ty)  # d of the step after the tile
    base = row * T * H + channels[None, :]
    for done in range(0, T, BLOCK_T):
        t = T - 1 - done - rows[:, None]  # the tile's rows in reverse time order
        mask = (t >= 0) & inside[None, :]
        offsets = base + t * H
        # Steps before 0 decay by 1 and add 0, so the tile's last row holds d at its first real step.
        coefficient = tl.load(a_ptr + offsets + H, mask=mask & (t + 1 < T), other=0.0)
        coefficient = tl.where(t >= 0, coefficient, 1.0)
        g = tl.load(grad_h_ptr + offsets, mask=mask, other=0.0)
        decay, value = tl.associative_scan((coefficient, g), 0, _follow)
        d = value + decay * d_after[None, :]
        tl.store(grad_b_ptr + offsets, d, mask=mask)
        if NEED_A:
            h_before = tl.load(h_ptr + offsets - H, mask=mask & (t > 0), other=0.0)
            tl.store(grad_a_ptr + offsets, d * tl.where(t > 0, h_before, h_start[None, :]), mask=mask)
        d_after = _row(d, rows, BLOCK_T - 1)
