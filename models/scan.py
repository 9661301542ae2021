"""Linear-recurrence scan: h_t = a_t * h_{t-1} + b_t along the time axis.

In the gated-delta RNN the gates a and the inputs b of every step depend only
on the input sequence, and the state update has no nonlinearity, so the states
of the whole sequence are one elementwise linear recurrence. Computing a and b
for all steps at once and then running this scan replaces the model's per-step
Python loop, and its per-step autograd graph, with one op whose backward is a
single reverse scan.

``linear_scan`` is the fast op; ``linear_scan_reference`` next to it is the
plain float64 loop that defines what it must compute.

Three backends compute it, chosen per call by ``select_backend``:
- CPU: the fused kernel of models/scan_kernel.cpp (built once per machine at first
  use by models/scan_cpu_kernel.py and checked against the reference before use).
  It walks each recurrence once, so forward and backward each touch every
  (B, T, H) tensor once, the op's memory floor.
- CUDA: the Triton kernels of models/scan_triton_kernels.py, the same sequential
  walk, where triton is installed and they pass a self-check on the device
  (models/scan_triton.py).
- everywhere else, and where a kernel is unavailable: the eager chunked scan below.

Eager algorithm (device-generic PyTorch): a two-level chunked scan with
O(sqrt T) sequential Python steps. Time is cut into nc chunks of L steps.
Level 1 runs all chunks at once from a zero state and keeps each chunk's end
state; level 2 walks the nc chunks in order to get each chunk's carry-in;
a final pass reruns all chunks at once from their carry-ins and writes the
states. Only products and multiply-adds of the a's appear (no exp/log of
cumulative sums, no division by cumulative products), so the result is exact up
to rounding for any real a: negative, near 0 or near 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models import scan_cpu_kernel, scan_triton

__all__ = ["linear_scan", "linear_scan_reference", "select_backend"]

# Below this length the plain loop issues fewer Python-level ops than the chunked scan.
_MIN_CHUNKED_T = 16

# The in-chunk passes cost two large ops per step and level 2 one small op per chunk,
# so the best chunk is a little shorter than sqrt(T); measured on a 2-core CPU, where
# anything between sqrt(T / 4) and sqrt(T) is within noise.
_CHUNK_FACTOR = 0.5


def linear_scan_reference(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Sequential float64 loop for h_t = a_t * h_{t-1} + b_t; returns all states (B, T, H) in float64."""
    a, b = a.double(), b.double()
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.double()
    states = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=1)


@torch.compiler.disable
def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Compute h_t = a_t * h_{t-1} + b_t over dim 1 of (B, T, H) tensors a and b.

    h0 is the (B, H) state before the first step (zeros if None). Returns all
    states (B, T, H) in b's dtype. The scan runs in float32 for half-precision
    inputs and under autocast, and in float64 when any input is float64.

    torch.compile runs it as one opaque call (torch.compiler.disable), whichever backend
    computes it: dynamo cannot trace the kernels' launches, and would unroll the eager
    scan's chunk loop into a graph for every T.
    """
    _check_inputs(a, b, h0)
    return _LinearScan.apply(a, b, h0, select_backend(b))


class EagerScan:
    """The device-generic chunked scan of the module docstring, in eager PyTorch ops."""

    @staticmethod
    def forward(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        h = torch.empty_like(b)
        _chunked_scan_into(a, b, h0, h, False)
        return h

    @staticmethod
    def backward(a: Tensor, h: Tensor, h0: Tensor | None, grad_h: Tensor, need_a: bool) -> tuple[Tensor, Tensor | None]:
        # d_t = g_t + a_{t+1} d_{t+1} with d_{T-1} = g_{T-1}: a reverse scan whose
        # coefficient at step t is a_{t+1}, i.e. a scan over a[:, 1:] seeded with g_{T-1}.
        d = torch.empty_like(h)
        d[:, -1].copy_(grad_h[:, -1])
        if h.shape[1] > 1:
            _chunked_scan_into(a[:, 1:], grad_h[:, :-1], d[:, -1], d[:, :-1], True)
        grad_a = None
        if need_a:
            grad_a = torch.empty_like(h)
            torch.mul(d[:, 1:], h[:, :-1], out=grad_a[:, 1:])
            if h0 is None:
                grad_a[:, 0].zero_()
            else:
                torch.mul(d[:, 0], h0, out=grad_a[:, 0])
        return d, grad_a


def select_backend(x: Tensor):
    """The fused kernel for x's device where one loaded and passed its self-check, else the eager scan.

    CPU: the C++ kernel (built at first use). CUDA: the Triton kernel (where triton is installed).
    """
    fused = None
    if x.device.type == "cpu":
        fused = scan_cpu_kernel.kernel()
    elif x.device.type == "cuda":
        fused = scan_triton.kernel()
    return EagerScan if fused is None else fused


def check_backend_against_reference(candidate, device: torch.device, channels: int, steps: int = 37) -> None:
    """A scan backend must reproduce the float64 reference loop (values and gradients) on `device`
    before it is used; raises RuntimeError on a mismatch. (3, steps, channels) float64 inputs with a
    non-zero h0 and decays in (-1, 1)."""
    generator = torch.Generator().manual_seed(0)
    shape = (3, steps, channels)
    a = (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1).requires_grad_()
    b = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(shape[0], channels, generator=generator, dtype=torch.float64)
    upstream = torch.randn(shape, generator=generator, dtype=torch.float64)
    reference = linear_scan_reference(a, b, h0)
    ref_grad_a, ref_grad_b = torch.autograd.grad(reference, (a, b), upstream)
    a, b, h0, upstream = (x.detach().to(device) for x in (a, b, h0, upstream))
    h = candidate.forward(a, b, h0)
    grad_b, grad_a = candidate.backward(a, h, h0, upstream, need_a=True)
    for name, value, expected in (("h", h, reference), ("grad_a", grad_a, ref_grad_a), ("grad_b", grad_b, ref_grad_b)):
        if not torch.allclose(value.cpu(), expected, rtol=1e-10, atol=1e-12):
            raise RuntimeError(f"self-check failed: {name} differs from linear_scan_reference")


def _check_inputs(a: Tensor, b: Tensor, h0: Tensor | None) -> None:
    for name, x in (("a", a), ("b", b)):
        if x.dim() != 3:
            raise ValueError(f"linear_scan: {name} has shape {_fmt(x.shape)} but must be 3-D as (B, T, H).")
    if a.shape != b.shape:
        raise ValueError(
            f"linear_scan: a has shape {_fmt(a.shape)} but b has shape {_fmt(b.shape)}; they must match as (B, T, H)."
        )
    if b.shape[1] == 0:
        raise ValueError(f"linear_scan: a and b have shape {_fmt(b.shape)} but need at least one time step (T >= 1).")
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(
            f"linear_scan: h0 has shape {_fmt(h0.shape)} but must be (B, H) = {_fmt((b.shape[0], b.shape[2]))}."
        )
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if x is None:
            continue
        if not x.is_floating_point():
            raise TypeError(f"linear_scan: {name} has dtype {x.dtype} but must be a floating-point tensor.")
        if x.device != b.device:
            raise ValueError(f"linear_scan: {name} is on {x.device} but b is on {b.device}; they must share a device.")


def _fmt(shape: tuple[int, ...] | torch.Size) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class _LinearScan(torch.autograd.Function):
    """Scan forward, reverse scan backward; autograd sees one node, not one per step."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, backend) -> Tensor:
        dtypes = [x.dtype for x in (a, b, h0) if x is not None]
        compute = torch.float64 if torch.float64 in dtypes else torch.float32
        # Autocast must not pull the recurrence back into half precision.
        with torch.autocast(b.device.type, enabled=False):
            a_c = a.to(compute).contiguous()
            b_c = b.to(compute).contiguous()
            h0_c = None if h0 is None else h0.to(compute).contiguous()
            h = backend.forward(a_c, b_c, h0_c)
        # a is saved as given (maybe half) and upcast again in backward, which is
        # cheaper in memory than keeping a float32 copy alive; h keeps full precision.
        ctx.save_for_backward(a, h, h0)
        ctx.backend = backend
        ctx.input_dtypes = (a.dtype, b.dtype, None if h0 is None else h0.dtype)
        return h.to(b.dtype)

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h, h0 = ctx.saved_tensors
        need_a, need_b, need_h0 = ctx.needs_input_grad[:3]
        with torch.autocast(h.device.type, enabled=False):
            a = a.to(h.dtype).contiguous()
            g = grad_h.to(h.dtype).contiguous()
            h0 = None if h0 is None else h0.to(h.dtype).contiguous()
            d, grad_a = ctx.backend.backward(a, h, h0, g, need_a)
            grad_h0 = a[:, 0] * d[:, 0] if need_h0 and h0 is not None else None
        a_dtype, b_dtype, h0_dtype = ctx.input_dtypes
        return (
            None if grad_a is None else grad_a.to(a_dtype),
            d.to(b_dtype) if need_b else None,
            None if grad_h0 is None else grad_h0.to(h0_dtype),
            None,
        )


def _loop_into(a: Tensor, b: Tensor, h0: Tensor | None, out: Tensor, reverse: bool) -> Tensor:
    """Plain sequential scan along dim 1 into out; returns the last computed state."""
    steps = list(zip(a.unbind(1), b.unbind(1), out.unbind(1)))
    prev = h0
    for a_t, b_t, out_t in reversed(steps) if reverse else steps:
        if prev is None:
            out_t.copy_(b_t)
        else:
            torch.addcmul(b_t, a_t, prev, out=out_t)
        prev = out_t
    return prev


def _chunk_len(T: int) -> int:
    return max(2, round(math.sqrt(T * _CHUNK_FACTOR)))


def _chunked_scan_into(a: Tensor, b: Tensor, h0: Tensor | None, out: Tensor, reverse: bool) -> Tensor:
    """Chunked scan along dim 1 of (B, T, H) views into out.

    reverse runs t = T-1 .. 0 with h_{t+1} as the previous state. The chunks
    cover the first nc * L steps; the ragged tail of fewer than L steps runs as a
    plain loop, after the chunks going forward and before them in reverse.
    """
    T = a.shape[1]
    if T < _MIN_CHUNKED_T:
        return _loop_into(a, b, h0, out, reverse)
    L = _chunk_len(T)
    nc = T // L
    main = nc * L
    if main == T:
        return _chunks_into(a, b, h0, out, reverse, nc, L)
    head, tail = slice(0, main), slice(main, T)
    if reverse:
        h0 = _loop_into(a[:, tail], b[:, tail], h0, out[:, tail], True)
        return _chunks_into(a[:, head], b[:, head], h0, out[:, head], True, nc, L)
    last = _chunks_into(a[:, head], b[:, head], h0, out[:, head], False, nc, L)
    return _loop_into(a[:, tail], b[:, tail], last, out[:, tail], False)


def _chunks_into(a: Tensor, b: Tensor, h0: Tensor | None, out: Tensor, reverse: bool, nc: int, L: int) -> Tensor:
    """Two-level scan over exactly nc chunks of L steps (see the module docstring)."""
    B, _, H = a.shape
    a4, b4, out4 = a.unflatten(1, (nc, L)), b.unflatten(1, (nc, L)), out.unflatten(1, (nc, L))
    # One unbind makes all L per-step (B, nc, H) views; indexing inside the loop
    # would build a view per step and operand.
    a_s, b_s, out_s = a4.unbind(2), b4.unbind(2), out4.unbind(2)
    steps = range(L - 1, -1, -1) if reverse else range(L)

    # Level 1: every chunk from a zero state; only the running end state is kept,
    # so this pass reads a and b and writes nothing of size T.
    first, second, *rest = steps
    end = torch.addcmul(b_s[second], a_s[second], b_s[first])
    for step in rest:
        torch.addcmul(b_s[step], a_s[step], end, out=end)

    # Level 2: chunk-end states follow the same recurrence over chunks, with the
    # product of a over a chunk as its coefficient. carry holds the state before
    # every chunk plus the one after the last, so the carry-ins are a plain slice.
    prod = torch.prod(a4, dim=2)
    carry = torch.empty(B, nc + 1, H, dtype=a.dtype, device=a.device)
    if reverse:
        seed, after, carry_in = carry[:, nc], carry[:, :nc], carry[:, 1:]
    else:
        seed, after, carry_in = carry[:, 0], carry[:, 1:], carry[:, :nc]
    if h0 is None:
        seed.zero_()
    else:
        seed.copy_(h0)
    _loop_into(prod, end, seed, after, reverse)

    # Rerunning the chunks from their carry-ins writes the states directly; it costs
    # the same ops as keeping in-chunk products for a correction pass but never
    # materialises a second T-sized buffer.
    prev = carry_in
    for step in steps:
        torch.addcmul(b_s[step], a_s[step], prev, out=out_s[step])
        prev = out_s[step]
    return out[:, 0] if reverse else out[:, -1]
