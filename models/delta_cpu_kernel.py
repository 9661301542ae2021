"""The fused CPU z2_delta block: the kernels of models/delta_kernel.cpp behind two autograd Functions.

GatedDeltaUnit (models/gated_delta.py) keeps its matmuls in torch and hands the elementwise work
around them to two kernels: `invariant_features` (the features of (u_t, u_{t-1}) from u and its
bilinear projections) and `gated_states` (the gates and both linear recurrences from the gate
pre-activations and W u). GatedDeltaBlock hands its RMSNorm to `rms_norm` and the even state's
modulation of the odd one to `modulated`. Each is one autograd node with a hand-written backward,
in place of about two dozen torch ops and their (B, T, d) intermediates.
models/cpu_kernel_build.py compiles the kernels at first use and caches them per machine.
``kernel()`` returns None, after one logged line, wherever they cannot be built or disagree with
the block's torch path; the block then takes that path. ``SEAM_DELTA_KERNEL=eager`` skips the kernels on purpose.

Each function the block calls here (``kernel_for`` and the four kernels) is ``torch.compiler.disable``d,
so that under compile=true each is one opaque call: dynamo would otherwise trace into the cached
loader and the ctypes calls, warn, recompile for every kernel name and at times fail while guarding.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from models.cpu_kernel_build import load_checked

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("delta_kernel.cpp")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_POINTERS = {
    "features_forward": 3,
    "features_backward": 5,
    "scan_forward": 6,
    "scan_backward": 12,
    "norm_forward": 4,
    "norm_backward": 6,
    "modulate_forward": 3,
    "modulate_backward": 5,
}


class Shape(ctypes.Structure):
    """Sizes of one call; mirrors `struct Shape` of delta_kernel.cpp."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("steps", ctypes.c_int64),
        ("stream", ctypes.c_int64),
        ("even", ctypes.c_int64),
        ("rank", ctypes.c_int64),
        ("seam", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("inv_temperature", ctypes.c_double),
        ("eps", ctypes.c_double),
    ]


def _shape(
    batch: int,
    steps: int,
    stream: int,
    even: int = 0,
    rank: int = 0,
    temperature: float | None = None,
    eps: float = 0.0,
):
    seam = temperature is not None
    threads = torch.get_num_threads()
    return Shape(batch, steps, stream, even, rank, int(seam), threads, 1.0 / temperature if seam else 0.0, eps)


def _steps_shape(x: Tensor, eps: float = 0.0) -> Shape:
    """The shape of a kernel whose steps are independent (norm, modulation): every leading axis is a step."""
    return _shape(x.numel() // x.shape[-1], 1, x.shape[-1], eps=eps)


def _pointer(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


class DeltaKernel:
    """The loaded library's entry points, on contiguous CPU tensors of one dtype (float32/float64)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._entries: dict[tuple[str, str], ctypes._CFuncPtr] = {}
        for name, pointers in _POINTERS.items():
            for suffix in _SUFFIX.values():
                entry = getattr(library, f"delta_{name}_{suffix}")
                entry.argtypes = [ctypes.c_void_p] * pointers + [ctypes.POINTER(Shape)]
                entry.restype = None
                self._entries[(name, suffix)] = entry

    def call(self, name: str, tensors: tuple[Tensor | None, ...], shape: Shape) -> None:
        dtype = next(t.dtype for t in tensors if t is not None)
        self._entries[(name, _SUFFIX[dtype])](*(_pointer(t) for t in tensors), ctypes.byref(shape))


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 where any input is float64, else float32 (also for half inputs under autocast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _prepared(dtype: torch.dtype, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    return tuple(None if t is None else t.to(dtype).contiguous() for t in tensors)


def _in_compute_dtype(ctx, *inputs: Tensor | None) -> tuple[Tensor | None, ...]:
    """A Function's inputs, contiguous in their compute dtype; `ctx` keeps their own dtypes."""
    ctx.input_dtypes = tuple(None if t is None else t.dtype for t in inputs)
    return _prepared(_compute_dtype(*inputs), *inputs)


def _in_input_dtypes(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
    """The gradients of a Function's inputs, each in its input's dtype."""
    return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.input_dtypes))


@torch.compiler.disable
def invariant_features(kernel: DeltaKernel, u: Tensor, left_right: Tensor) -> Tensor:
    """The features (B, T, 3 + 2k) of GatedDeltaUnit.invariants from u (B, T, d) and its bilinear
    projections [L u | R u] (B, T, 2k), with u_{-1} = 0."""
    return _PairedKernel.apply(u, left_right, _FEATURES, None, kernel)


@torch.compiler.disable
def gated_states(
    kernel: DeltaKernel,
    features: Tensor,
    gate_map: tuple[Tensor, Tensor],
    u: Tensor,
    odd_weight: Tensor,
    state: tuple[Tensor | None, Tensor | None],
    even_dim: int,
    temperature: float | None,
) -> tuple[Tensor, Tensor]:
    """(h_odd (B, T, d), h_even (B, T, e)) of GatedDeltaUnit from its invariant features (B, T, F),
    the (weight, bias) of its map to the gate pre-activations (seam score first where `temperature`
    is not None), its input u (B, T, d), the weight W of its odd drive W u and the initial
    (h_odd, h_even) (None: zeros)."""
    return _GatedStates.apply(features, *gate_map, u, odd_weight, *state, even_dim, temperature, kernel)


@torch.compiler.disable
def rms_norm(kernel: DeltaKernel, x: Tensor, weight: Tensor, eps: float | None) -> Tensor:
    """nn.functional.rms_norm(x, (d,), weight, eps) of x (..., d): eps None is the compute dtype's machine epsilon."""
    return _PairedKernel.apply(x, weight, _NORM, eps, kernel)


@torch.compiler.disable
def modulated(kernel: DeltaKernel, h_odd: Tensor, modulation: Tensor) -> Tensor:
    """h_odd * sigmoid(modulation), both (..., d): the block's even state modulating its odd one."""
    return _PairedKernel.apply(h_odd, modulation, _MODULATION, None, kernel)


class _Workspace:
    """Buffers for the pre-activations and odd drives, handed from one training step to the next.

    Both live only inside _GatedStates, from its forward to the end of its backward (which
    overwrites them with their gradients), so they can be reused. A fresh buffer of that size
    costs its first touch of every page (about 4 ms per step at B=32, T=1000 on a 2-core VM);
    a reused one does not."""

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], torch.dtype], list[Tensor]] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        free = self._free.get((tuple(shape), dtype))
        return free.pop() if free else torch.empty(shape, dtype=dtype)

    def give(self, *buffers: Tensor) -> None:
        for buffer in buffers:
            free = self._free.setdefault((tuple(buffer.shape), buffer.dtype), [])
            if len(free) < 2:
                free.append(buffer)


WORKSPACE = _Workspace()


class _GatedStates(torch.autograd.Function):
    """Gate pre-activations and odd drive (two matmuls), the kernel's forward, and in backward its
    reverse walk, which writes the gradients of both over them, and the matmuls' gradients."""

    @staticmethod
    def forward(ctx, features, gate_weight, gate_bias, u, odd_weight, h0_odd, h0_even, even_dim, temperature, kernel):
        with torch.autocast("cpu", enabled=False):
            prepared = _in_compute_dtype(ctx, features, gate_weight, gate_bias, u, odd_weight, h0_odd, h0_even)
            features, gate_weight, gate_bias, u, odd_weight, start_odd, start_even = prepared
            batch, steps, width = u.shape
            shape = _shape(batch, steps, width, even_dim, temperature=temperature)
            pre, drive = _GatedStates.maps(features, gate_weight, gate_bias, u, odd_weight, WORKSPACE)
            h_odd, h_even = u.new_empty(batch, steps, width), u.new_empty(batch, steps, even_dim)
            kernel.call("scan_forward", (pre, drive, start_odd, start_even, h_odd, h_even), shape)
        ctx.save_for_backward(*prepared, h_odd, h_even)
        ctx.buffers = (pre, drive)
        ctx.shape, ctx.kernel = shape, kernel
        ctx.set_materialize_grads(False)
        return h_odd, h_even

    @staticmethod
    def maps(features, gate_weight, gate_bias, u, odd_weight, workspace: _Workspace | None = None):
        """The pre-activations (B, T, P) and the odd drive W u (B, T, d), in workspace buffers if given."""
        take = workspace.take if workspace is not None else lambda shape, dtype: torch.empty(shape, dtype=dtype)
        pre = take((*u.shape[:2], gate_weight.shape[0]), u.dtype)
        drive = take(u.shape, u.dtype)
        torch.addmm(gate_bias, features.flatten(0, 1), gate_weight.t(), out=pre.view(-1, pre.shape[-1]))
        torch.mm(u.flatten(0, 1), odd_weight.t(), out=drive.view(-1, drive.shape[-1]))
        return pre, drive

    @staticmethod
    def backward(ctx, grad_odd, grad_even):
        features, gate_weight, gate_bias, u, odd_weight, start_odd, start_even, h_odd, h_even = ctx.saved_tensors
        if ctx.buffers is None:  # a second backward through a retained graph: the first overwrote them
            ctx.buffers = _GatedStates.maps(features, gate_weight, gate_bias, u, odd_weight)
        pre, drive = ctx.buffers
        ctx.buffers = None
        grad_odd, grad_even = _prepared(pre.dtype, grad_odd, grad_even)
        grad_start_odd = None if start_odd is None else torch.empty_like(start_odd)
        grad_start_even = None if start_even is None else torch.empty_like(start_even)
        ctx.kernel.call(
            "scan_backward",
            (pre, drive, h_odd, h_even, start_odd, start_even, grad_odd, grad_even, pre, drive)
            + (grad_start_odd, grad_start_even),
            ctx.shape,
        )
        grad_pre, grad_drive = pre.flatten(0, 1), drive.flatten(0, 1)  # now the gradients
        need = ctx.needs_input_grad
        # The gate's weight gradient as (features^T grad_pre)^T: with the long (B T) axis inner in
        # both operands' rows, the BLAS runs it about 1.3-2x faster than grad_pre^T features here.
        grads = (
            (grad_pre @ gate_weight).view_as(features) if need[0] else None,
            (features.flatten(0, 1).t() @ grad_pre).t() if need[1] else None,
            grad_pre.sum(0) if need[2] else None,
            (grad_drive @ odd_weight).view_as(u) if need[3] else None,
            grad_drive.t() @ u.flatten(0, 1) if need[4] else None,
            grad_start_odd,
            grad_start_even,
        )
        WORKSPACE.give(pre, drive)
        return (*_in_input_dtypes(ctx, *grads), None, None, None)


@dataclass(frozen=True)
class _KernelPair:
    """A kernel pair over two inputs (a, b): `<name>_forward` reads them and writes the output and
    the extras its backward reads; `<name>_backward` reads the inputs, the extras and the output's
    gradient and writes the gradients of a and b."""

    name: str
    shape: Callable[[Tensor, Tensor, float | None], Shape]  # of the call, from (a, b, option)
    outputs: Callable[[Tensor, Tensor], tuple[Tensor, ...]]  # (output, *extras), allocated


_FEATURES = _KernelPair(
    "features",
    shape=lambda u, left_right, _: _shape(*u.shape, rank=left_right.shape[-1] // 2),
    outputs=lambda u, left_right: (u.new_empty(*u.shape[:2], 3 + left_right.shape[-1]),),
)
_NORM = _KernelPair(
    "norm",
    shape=lambda x, weight, eps: _steps_shape(x, torch.finfo(x.dtype).eps if eps is None else eps),
    outputs=lambda x, weight: (torch.empty_like(x), x.new_empty(x.shape[:-1])),
)
# The sigmoid is recomputed in backward from the modulation, so no (B, T, d) gate is stored.
_MODULATION = _KernelPair(
    "modulate",
    shape=lambda h_odd, modulation, _: _steps_shape(h_odd),
    outputs=lambda h_odd, modulation: (torch.empty_like(h_odd),),
)


class _PairedKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, pair: _KernelPair, option, kernel):
        with torch.autocast("cpu", enabled=False):
            a, b = _in_compute_dtype(ctx, a, b)
            shape = pair.shape(a, b, option)
            output, *extras = pair.outputs(a, b)
            kernel.call(f"{pair.name}_forward", (a, b, output, *extras), shape)
        ctx.save_for_backward(a, b, *extras)
        ctx.pair, ctx.shape, ctx.kernel = pair, shape, kernel
        return output

    @staticmethod
    def backward(ctx, grad_output):
        a, b, *extras = ctx.saved_tensors
        (grad_output,) = _prepared(a.dtype, grad_output)
        grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
        ctx.kernel.call(f"{ctx.pair.name}_backward", (a, b, *extras, grad_output, grad_a, grad_b), ctx.shape)
        return (*_in_input_dtypes(ctx, grad_a, grad_b), None, None, None)


def _values_and_gradients(values: list[Tensor], leaves: list[Tensor]) -> list[Tensor]:
    """`values` and the gradients of a fixed weighting of them w.r.t. `leaves` (None where unused)."""
    weighted = sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)).sum() for v in values)
    return values + list(torch.autograd.grad(weighted, leaves, allow_unused=True))


def _self_check(candidate: DeltaKernel) -> None:
    """The kernels must reproduce the unit's torch path in float64 (states, final state and the
    gradients of every parameter, the input and the initial state), with and without the seam,
    from zeros and from a given state, and the block's norm and modulation their torch ops
    (values and gradients), before they are used."""
    from models.gated_delta import GatedDeltaUnit

    generator = torch.Generator().manual_seed(0)

    def draw(*size: int) -> Tensor:
        return torch.randn(*size, generator=generator, dtype=torch.float64)

    for seam in (True, False):
        unit = GatedDeltaUnit(stream_dim=5, even_dim=3, delta_rank=2, temperature=0.3, seam=seam).double()
        with torch.no_grad():
            for parameter in unit.parameters():
                parameter.copy_(0.7 * draw(*parameter.shape))
        u = draw(2, 9, 5).requires_grad_()
        for state in (None, tuple(draw(*size).requires_grad_() for size in ((2, 5), (2, 3), (2, 5)))):
            leaves = [u, *unit.parameters(), *(state or ())]
            results = {}
            for path, kernel in (("torch", None), ("fused", candidate)):
                h_odd, h_even, final, _ = unit.states(u, state, kernel)
                results[path] = _values_and_gradients([h_odd, h_even, *final], leaves)
            _compare(results, f"(seam={seam}, state={state is not None}) does not match the z2_delta unit's torch path")
    x, weight, h_odd, modulation = (draw(*size).requires_grad_() for size in ((2, 9, 5), (5,), (2, 9, 5), (2, 9, 5)))
    for op, fused, torch_ops, leaves in (
        ("norm", rms_norm(candidate, x, weight, 1e-3), nn.functional.rms_norm(x, (5,), weight, 1e-3), [x, weight]),
        ("modulation", modulated(candidate, h_odd, modulation), h_odd * torch.sigmoid(modulation), [h_odd, modulation]),
    ):
        results = {"fused": _values_and_gradients([fused], leaves), "torch": _values_and_gradients([torch_ops], leaves)}
        _compare(results, f"of the block's {op} does not match its torch ops")


def _compare(results: dict[str, list[Tensor]], mismatch: str) -> None:
    for index, (value, expected) in enumerate(zip(results["fused"], results["torch"])):
        if not torch.allclose(value, expected, rtol=1e-10, atol=1e-12):
            raise RuntimeError(f"self-check failed: output {index} {mismatch}")


@cache
def kernel() -> DeltaKernel | None:
    """The fused CPU kernels, or None (logged once) where they cannot be built or are switched off."""
    return load_checked(SOURCE, DeltaKernel, _self_check, "SEAM_DELTA_KERNEL", log, "z2_delta", "its torch path")


@torch.compiler.disable
def kernel_for(x: Tensor) -> DeltaKernel | None:
    """kernel() where the fused kernels compute the unit of input x (CPU tensors of a floating dtype), else None."""
    return kernel() if x.device.type == "cpu" and x.is_floating_point() else None
