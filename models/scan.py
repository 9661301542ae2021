"""Linear-recurrence scan: h_t = a_t * h_{t-1} + b_t over the time axis.

A gated-delta RNN with input-dependent gates has no nonlinearity inside its
state update, so the state over the whole sequence is one elementwise linear
recurrence. Once the gates a and the inputs b are computed for all steps in
parallel, a scan replaces the per-step Python loop and its per-step autograd
graph: one fused forward over all T steps and one reverse scan for backward.

``linear_scan`` is the fast op; ``linear_scan_reference`` is the plain
sequential loop it is tested against.

Algorithm (device-generic, eager PyTorch): a two-level chunked scan with
O(sqrt T) sequential Python steps. Time is cut into nc chunks of L steps.
Level 1 runs all chunks at once from a zero state to get each chunk's end
state; level 2 walks the nc chunks sequentially to get each chunk's carry-in;
level 3 reruns all chunks at once from their carry-ins and writes the output.
Only products and multiply-adds of the a's appear: no exp/log of cumulative
sums and no division by cumulative products, so it is exact (up to rounding)
for any real a, including a near 0, negative a and a near 1.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["linear_scan", "linear_scan_reference"]

# Below this length the plain loop has fewer Python-level ops than the chunked one.
_MIN_CHUNKED_T = 16

# Level 1 and 3 cost two big ops per in-chunk step, level 2 one small op per chunk,
# so the best chunk is shorter than sqrt(T); the factor is measured on CPU.
_CHUNK_FACTOR = 0.5

# scan_into(a, b, h0, out, reverse) fills out (B, T, H) with the recurrence and
# returns the state at the last step it computed.
ScanInto = Callable[[Tensor, Tensor, Optional[Tensor], Tensor, bool], Tensor]


def linear_scan_reference(a: Tensor, b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """Sequential float64 loop computing h_t = a_t * h_{t-1} + b_t; returns (B, T, H) float64."""
    a, b = a.double(), b.double()
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.double()
    states = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        states.append(h)
    return torch.stack(states, dim=1)


def linear_scan(a: Tensor, b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """Compute h_t = a_t * h_{t-1} + b_t for (B, T, H) tensors a, b; h0 is (B, H) or None (zeros).

    Returns all states (B, T, H) in b's dtype. Half-precision inputs (or inputs
    under autocast) are computed in float32; float64 stays float64.
    """
    _check_inputs(a, b, h0)
    return _LinearScan.apply(a, b, h0, _select_scan(b))


def _select_scan(x: Tensor) -> ScanInto:
    return _chunked_scan_into


def _check_inputs(a: Tensor, b: Tensor, h0: Optional[Tensor]) -> None:
    for name, x in (("a", a), ("b", b)):
        if x.dim() != 3:
            raise ValueError(f"linear_scan: {name} must be 3-D (B, T, H) but has shape {_fmt(x.shape)}.")
    if a.shape != b.shape:
        raise ValueError(
            f"linear_scan: a has shape {_fmt(a.shape)} but b has shape {_fmt(b.shape)}; they must match as (B, T, H)."
        )
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(
            f"linear_scan: h0 has shape {_fmt(h0.shape)} but must be (B, H) = {_fmt((b.shape[0], b.shape[2]))}."
        )
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if x is not None and not x.is_floating_point():
            raise TypeError(f"linear_scan: {name} must be a floating-point tensor but has dtype {x.dtype}.")
        if x is not None and x.device != b.device:
            raise ValueError(f"linear_scan: {name} is on {x.device} but b is on {b.device}; they must share a device.")


def _fmt(shape: tuple[int, ...] | torch.Size) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class _LinearScan(torch.autograd.Function):
    """h = scan(a, b, h0) with a reverse scan as backward; never records a per-step graph."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Optional[Tensor], scan_into: ScanInto) -> Tensor:
        dtypes = [x.dtype for x in (a, b, h0) if x is not None]
        compute = torch.float64 if torch.float64 in dtypes else torch.float32
        # Autocast must not pull the recurrence back into half precision.
        with torch.autocast(b.device.type, enabled=False):
            a_c = a.to(compute).contiguous()
            b_c = b.to(compute).contiguous()
            h0_c = None if h0 is None else h0.to(compute)
            h = torch.empty_like(b_c)
            scan_into(a_c, b_c, h0_c, h, False)
        out = h.to(b.dtype)
        ctx.save_for_backward(a, h, h0)
        ctx.scan_into = scan_into
        ctx.input_dtypes = (a.dtype, b.dtype, None if h0 is None else h0.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h, h0 = ctx.saved_tensors
        need_a, need_b, need_h0 = ctx.needs_input_grad[:3]
        compute = h.dtype
        with torch.autocast(h.device.type, enabled=False):
            a = a.to(compute).contiguous()
            g = grad_h.to(compute)
            h0 = None if h0 is None else h0.to(compute)
            # d_t = g_t + a_{t+1} d_{t+1}, d_{T-1} = g_{T-1}: a reverse scan whose
            # coefficient at step t is a_{t+1}, i.e. the scan over a[:, 1:].
            d = torch.empty_like(h)
            d[:, -1].copy_(g[:, -1])
            if h.shape[1] > 1:
                ctx.scan_into(a[:, 1:], g[:, :-1], d[:, -1], d[:, :-1], True)
            grad_a = grad_h0 = None
            if need_a:
                grad_a = torch.empty_like(h)
                torch.mul(d[:, 1:], h[:, :-1], out=grad_a[:, 1:])
                if h0 is None:
                    grad_a[:, 0].zero_()
                else:
                    torch.mul(d[:, 0], h0, out=grad_a[:, 0])
            if need_h0 and h0 is not None:
                grad_h0 = a[:, 0] * d[:, 0]
        a_dt, b_dt, h0_dt = ctx.input_dtypes
        return (
            None if grad_a is None else grad_a.to(a_dt),
            d.to(b_dt) if need_b else None,
            None if grad_h0 is None else grad_h0.to(h0_dt),
            None,
        )


def _loop_into(a: Tensor, b: Tensor, h0: Optional[Tensor], out: Tensor, reverse: bool) -> Tensor:
    """Plain sequential scan along dim 1 writing into out; returns the last computed state."""
    steps = zip(a.unbind(1), b.unbind(1), out.unbind(1))
    prev = h0
    for a_t, b_t, o_t in reversed(list(steps)) if reverse else steps:
        if prev is None:
            o_t.copy_(b_t)
        else:
            torch.addcmul(b_t, a_t, prev, out=o_t)
        prev = o_t
    return prev


def _chunk_len(T: int) -> int:
    return max(2, int(round(math.sqrt(T * _CHUNK_FACTOR))))


def _chunked_scan_into(a: Tensor, b: Tensor, h0: Optional[Tensor], out: Tensor, reverse: bool) -> Tensor:
    """Scan along dim 1 of (B, T, H) views into out; reverse runs t = T-1 .. 0 with h_{t+1} as state.

    The chunks cover the first nc * L steps; the ragged tail of fewer than L steps
    runs as a plain loop (after the chunks going forward, before them in reverse).
    """
    T = a.shape[1]
    if T < _MIN_CHUNKED_T:
        return _loop_into(a, b, h0, out, reverse)
    L = _chunk_len(T)
    nc = T // L
    main = nc * L
    if main == T:
        return _chunks_into(a, b, h0, out, reverse, nc, L)
    if reverse:
        h0 = _loop_into(a[:, main:], b[:, main:], h0, out[:, main:], True)
        return _chunks_into(a[:, :main], b[:, :main], h0, out[:, :main], True, nc, L)
    last = _chunks_into(a[:, :main], b[:, :main], h0, out[:, :main], False, nc, L)
    return _loop_into(a[:, main:], b[:, main:], last, out[:, main:], False)


def _chunks_into(
    a: Tensor, b: Tensor, h0: Optional[Tensor], out: Tensor, reverse: bool, nc: int, L: int
) -> Tensor:
    """Two-level scan over exactly nc chunks of L steps; see the module docstring."""
    B, _, H = a.shape
    a4 = a.unflatten(1, (nc, L))
    b4 = b.unflatten(1, (nc, L))
    o4 = out.unflatten(1, (nc, L))
    # unbind gives all per-step (B, nc, H) views in one call; indexing per step costs a view each.
    a_s, b_s, o_s = a4.unbind(2), b4.unbind(2), o4.unbind(2)
    steps = range(L - 1, -1, -1) if reverse else range(L)

    # Level 1: every chunk from a zero state; only its end state is kept.
    first, second, *rest = steps
    end = torch.addcmul(b_s[second], a_s[second], b_s[first])
    for l in rest:
        torch.addcmul(b_s[l], a_s[l], end, out=end)

    # Level 2: carry-in of chunk k = (product of a over chunk k-1) * carry-in of k-1 + end of k-1.
    prod = torch.prod(a4, dim=2)
    carry = torch.empty(B, nc, H, dtype=a.dtype, device=a.device)
    c_s, p_s, e_s = carry.unbind(1), prod.unbind(1), end.unbind(1)
    chunks = range(nc - 1, -1, -1) if reverse else range(nc)
    k0 = chunks[0]
    if h0 is None:
        c_s[k0].zero_()
    else:
        c_s[k0].copy_(h0)
    for prev_k, k in zip(chunks, chunks[1:]):
        torch.addcmul(e_s[prev_k], p_s[prev_k], c_s[prev_k], out=c_s[k])

    # Level 3: rerun every chunk from its carry-in, writing the states in place.
    prev = carry
    for l in steps:
        torch.addcmul(b_s[l], a_s[l], prev, out=o_s[l])
        prev = o_s[l]
    return out[:, 0] if reverse else out[:, -1]
