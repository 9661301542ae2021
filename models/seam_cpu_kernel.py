"""The fused CPU z2_seam recurrence: the kernel of models/seam_kernel.cpp behind an autograd Function.

Z2SeamRNN computes everything that does not read the state for all steps at once (its
`_step_maps`); `seam_recurrence` then runs the whole time loop, and its backward through time, in
one call of the kernel instead of a dozen small torch ops and autograd nodes per step.
models/cpu_kernel_build.py compiles the kernel at first use and caches it per machine. ``kernel()``
returns None, after one logged line, wherever the kernel cannot be built or disagrees with the
model's eager loop; the model then runs that loop. ``SEAM_SEAM_KERNEL=eager`` skips the kernel on purpose.

``kernel_for`` and ``seam_recurrence`` are ``torch.compiler.disable``d: under compile=true each is one
opaque call, where dynamo would otherwise trace into the cached loader and the ctypes call.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache, partial
from pathlib import Path

import torch
from torch import Tensor

from models.cpu_kernel_build import load_checked
from models.parity import K_STAR

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("seam_kernel.cpp")
# The gate kinds of seam_kernel.cpp: fixed and none are both a constant gate.
GATE_KINDS = {"learned": 0, "kstar": 1, "fixed": 2, "none": 2}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_FORWARD_POINTERS, _BACKWARD_POINTERS = 16, 26
# The inputs the backward reads besides the saved states: x, state, odd, modulation and readout weight.
BACKWARD_READS = (0, 1, 4, 5, 7)


class Shape(ctypes.Structure):
    """Sizes and gate of one call; mirrors `struct Shape` of seam_kernel.cpp."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("steps", ctypes.c_int64),
        ("input", ctypes.c_int64),
        ("even", ctypes.c_int64),
        ("odd", ctypes.c_int64),
        ("gate", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("temperature", ctypes.c_double),
        ("constant_gate", ctypes.c_double),
        ("threshold", ctypes.c_double),
    ]


class SeamKernel:
    """The loaded library's forward and backward on contiguous CPU float32/float64 tensors of one dtype."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._forward, self._backward = {}, {}
        for suffix in _SUFFIX.values():
            forward = getattr(library, f"seam_forward_{suffix}")
            forward.argtypes = [ctypes.c_void_p] * _FORWARD_POINTERS + [ctypes.POINTER(Shape)]
            forward.restype = None
            backward = getattr(library, f"seam_backward_{suffix}")
            backward.argtypes = [ctypes.c_void_p] * _BACKWARD_POINTERS + [ctypes.POINTER(Shape)]
            backward.restype = None
            self._forward[suffix], self._backward[suffix] = forward, backward

    def forward(self, inputs: tuple[Tensor, ...], shape: Shape) -> tuple[Tensor, ...]:
        """Every state of the recurrence, initial one first: (h_even (B, T + 1, E), h_odd (B, T + 1, O),
        readout modulation (B, T + 1, O), prediction y (B, T + 1, D), parity energy (B, T + 1), gate (B, T)).
        `inputs`: the tensors of `_SeamRecurrence.forward`, in its order."""
        x = inputs[0]
        batch, after, even, odd = shape.batch, shape.steps + 1, shape.even, shape.odd
        sizes = (batch, after, even), (batch, after, odd), (batch, after, odd), (batch, after, shape.input)
        states = tuple(x.new_empty(size) for size in (*sizes, (batch, after), (batch, shape.steps)))
        self._forward[_SUFFIX[x.dtype]](*(t.data_ptr() for t in (*inputs, *states)), ctypes.byref(shape))
        return states

    def backward(
        self,
        reads: tuple[Tensor, ...],
        states: tuple[Tensor, ...],
        upstream: tuple[Tensor | None, ...],
        shape: Shape,
    ) -> tuple[Tensor, ...]:
        """The gradients of all inputs of `forward` (x through x.y only), in their order. `reads`: the
        inputs at BACKWARD_READS; `states`: forward's result; `upstream`: the gradients of the
        predictions (B, T, D), final h_even and h_odd, gates and parity energies, each but the first
        may be None."""
        x, state_weight, odd_weight, modulation_weight, readout_weight = reads
        batch, steps, odd = shape.batch, shape.steps, shape.odd
        grads = (
            torch.empty_like(x),
            torch.empty_like(state_weight),
            x.new_empty(batch, steps, state_weight.shape[1]),
            x.new_empty(batch, steps, odd),
            torch.empty_like(odd_weight),
            torch.empty_like(modulation_weight),
            x.new_empty(odd),
            torch.empty_like(readout_weight),
            x.new_empty(batch, shape.even),
            x.new_empty(batch, odd),
        )
        pointers = [t.data_ptr() for t in (*reads, *states)]
        pointers += [None if t is None else t.data_ptr() for t in upstream]
        pointers += [t.data_ptr() for t in grads]
        self._backward[_SUFFIX[x.dtype]](*pointers, ctypes.byref(shape))
        return grads


@torch.compiler.disable
def seam_recurrence(
    kernel: SeamKernel,
    x: Tensor,
    maps: tuple[Tensor, Tensor, Tensor],
    weights: tuple[Tensor, Tensor, Tensor, Tensor],
    state: tuple[Tensor, Tensor],
    gate: str,
    temperature: float,
    constant_gate: float,
) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor, Tensor]:
    """The z2_seam time loop on x (B, T, D) from `state` (h_even, h_odd) through `kernel`.

    `maps` = (state weight, static part, odd drive) of Z2SeamRNN._step_maps; `weights` = (odd
    recurrent weight, readout modulation weight, its bias, readout weight), as nn.Linear stores them.
    Returns (predictions (B, T, D), final state, gates (B, T), parity energies (B, T)) in x's dtype,
    computed in float64 when any input is float64, else in float32 (also under autocast). Autograd
    reaches every tensor input; x only through its x.y feature, its other uses being in `maps`.
    """
    predictions, h_even, h_odd, gates, energies = _SeamRecurrence.apply(
        x, *maps, *weights, *state, GATE_KINDS[gate], temperature, constant_gate, kernel
    )
    return predictions, (h_even, h_odd), gates, energies


class _SeamRecurrence(torch.autograd.Function):
    """The kernel's forward, and its backward through time; autograd sees one node for the whole loop."""

    @staticmethod
    def forward(
        ctx,
        x,
        state_weight,
        static,
        odd_drive,
        odd_weight,
        modulation_weight,
        modulation_bias,
        readout_weight,
        h_even,
        h_odd,
        gate_kind,
        temperature,
        constant_gate,
        kernel,
    ):
        given = (x, state_weight, static, odd_drive, odd_weight, modulation_weight, modulation_bias, readout_weight)
        given += (h_even, h_odd)
        compute = torch.float64 if any(t.dtype == torch.float64 for t in given) else torch.float32
        inputs = tuple(t.to(compute).contiguous() for t in given)
        batch, steps, input_dim = x.shape
        shape = Shape(
            batch,
            steps,
            input_dim,
            h_even.shape[1],
            h_odd.shape[1],
            gate_kind,
            torch.get_num_threads(),
            temperature,
            constant_gate,
            K_STAR,
        )
        states = kernel.forward(inputs, shape)
        ctx.save_for_backward(*(inputs[i] for i in BACKWARD_READS), *states)
        ctx.shape, ctx.kernel, ctx.input_dtypes = shape, kernel, [t.dtype for t in given]
        ctx.set_materialize_grads(False)
        all_even, all_odd, _, predictions, energies, gates = states
        # Copies, not views, so that no caller can write into the saved states.
        outputs = tuple(
            t.to(x.dtype, copy=True)
            for t in (predictions[:, 1:], all_even[:, -1], all_odd[:, -1], gates, energies[:, 1:])
        )
        if gate_kind == GATE_KINDS["fixed"]:
            ctx.mark_non_differentiable(outputs[3])
        return outputs

    @staticmethod
    def backward(ctx, grad_predictions, grad_h_even, grad_h_odd, grad_gates, grad_energies):
        saved = ctx.saved_tensors
        reads, states = saved[: len(BACKWARD_READS)], saved[len(BACKWARD_READS) :]
        x = reads[0]
        if grad_predictions is None:
            grad_predictions = x.new_zeros(x.shape)
        upstream = tuple(
            None if g is None else g.to(x.dtype).contiguous()
            for g in (grad_predictions, grad_h_even, grad_h_odd, grad_gates, grad_energies)
        )
        grads = ctx.kernel.backward(reads, states, upstream, ctx.shape)
        needed = zip(grads, ctx.input_dtypes, ctx.needs_input_grad)
        return (*(g.to(dtype) if need else None for g, dtype, need in needed), None, None, None, None)


def _self_check(candidate: SeamKernel) -> None:
    """The kernel must reproduce the model's eager loop in float64 (values, diagnostics, final state
    and the gradients of every parameter, x and the initial state) for every gate before it is used."""
    from models.z2_seam import GATE_TYPES, Z2SeamRNN

    generator = torch.Generator().manual_seed(0)

    def draw(*size: int) -> Tensor:
        return torch.randn(*size, generator=generator, dtype=torch.float64)

    for gate in GATE_TYPES:
        # Hidden 20: 10 channels, so the backward's float64 register tiles of outer products and their tails all run.
        model = Z2SeamRNN(3, hidden_dim=20, gate=gate, temperature=0.3).double()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(0.7 * draw(*parameter.shape))
        x, h_even, h_odd = (draw(*size).requires_grad_() for size in ((2, 9, 3), (2, 10), (2, 10)))
        leaves = [x, h_even, h_odd, *model.parameters()]
        results = {}
        for path, run in (("eager", model._run_eager), ("fused", partial(model._run_fused, kernel=candidate))):
            output, diagnostics, (final_even, final_odd) = run(x, h_even, h_odd, True)
            values = [output, diagnostics["gate"], diagnostics["parity_energy"], final_even, final_odd]
            weighted = sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)).sum() for v in values)
            results[path] = values + list(torch.autograd.grad(weighted, leaves, allow_unused=True))
        names = ["predictions", "gate", "parity_energy", "final h_even", "final h_odd", "grad x", "grad h_even"]
        names += ["grad h_odd"] + [f"grad {name}" for name, _ in model.named_parameters()]
        for name, value, expected in zip(names, results["fused"], results["eager"]):
            if not torch.allclose(value, expected, rtol=1e-10, atol=1e-12):
                raise RuntimeError(f"self-check failed: {name} (gate={gate}) does not match the eager z2_seam loop")


@cache
def kernel() -> SeamKernel | None:
    """The fused CPU kernel, or None (logged once) where it cannot be built or is switched off."""
    return load_checked(SOURCE, SeamKernel, _self_check, "SEAM_SEAM_KERNEL", log, "z2_seam", "the eager step loop")


@torch.compiler.disable
def kernel_for(x: Tensor) -> SeamKernel | None:
    """kernel() where the fused kernel computes the recurrence of input x (CPU float32/float64 tensors), else None."""
    return kernel() if x.device.type == "cpu" and x.dtype in _SUFFIX else None
