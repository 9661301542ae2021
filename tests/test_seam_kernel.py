"""The fused CPU z2_seam kernel: equal to the model's eager step loop in value, diagnostics, final state
and every gradient, a correct autograd Function (gradcheck), float32 under autocast, and replaced by
the eager loop under a torch function mode, where it is switched off and where it cannot be built;
exactly equivariant in float32 too."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import CountTanh

from models import build_model, cpu_kernel_build, seam_cpu_kernel
from models.z2_seam import GATE_TYPES


@pytest.fixture
def kernel():
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine: the fused seam kernel cannot be built")
    fused = seam_cpu_kernel.kernel()
    assert fused is not None, "a compiler exists but the seam kernel did not load (see the logged line)"
    return fused


def _model(
    gate: str, dtype: torch.dtype, seed: int = 0, hidden_dim: int = 18, input_dim: int = 3, weight_scale: float = 0.5
):
    """A z2_seam with random weights of moderate scale (hidden 18: 9 channels, so vector loops have tails)."""
    model = build_model("z2_seam", input_dim=input_dim, hidden_dim=hidden_dim, gate=gate, temperature=0.5)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(weight_scale * torch.randn(parameter.shape, generator=generator))
    return model.to(dtype)


def _inputs(model, batch: int, steps: int, dtype: torch.dtype, seed: int = 1):
    """x and a non-zero initial (h_even, h_odd), all leaves that require grad."""
    generator = torch.Generator().manual_seed(seed)
    sizes = (batch, steps, model.readout.out_features), (batch, model.even_recurrent.in_features)
    sizes += ((batch, model.odd_recurrent.in_features),)
    return [(0.8 * torch.randn(size, generator=generator, dtype=dtype)).requires_grad_() for size in sizes]


def _run_and_differentiate(model, run, leaves):
    """Every value the loop returns and the gradients of a weighted sum of all of them w.r.t. x, h0 and the weights."""
    x, h_even, h_odd = leaves
    output, diagnostics, final_state = run(x, h_even, h_odd, True)
    values = [output, diagnostics["gate"], diagnostics["parity_energy"], *final_state]
    generator = torch.Generator().manual_seed(2)
    weighted = sum((v * torch.randn(v.shape, generator=generator, dtype=v.dtype)).sum() for v in values)
    parameters = list(model.parameters())
    return values + list(torch.autograd.grad(weighted, [*leaves, *parameters]))


def _names(model) -> list[str]:
    return ["predictions", "gate", "parity energy", "final h_even", "final h_odd", "grad x", "grad h_even"] + [
        "grad h_odd",
        *(f"grad {name}" for name, _ in model.named_parameters()),
    ]


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps", [1, 2, 63, 100])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("gate", GATE_TYPES)
def test_the_kernel_equals_the_eager_loop(kernel, gate, batch, steps, dtype):
    _assert_the_kernel_equals_the_eager_loop(kernel, _model(gate, dtype), batch, steps, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gate", GATE_TYPES)
def test_the_kernel_equals_the_eager_loop_where_its_weight_gradients_fill_whole_tiles(kernel, gate, dtype):
    # Hidden 70: 35 channels, so the backward's register tiles of outer products (4 rows by 16
    # float32 or 8 float64 columns) cover most of each weight gradient and leave row and column tails.
    # Weights scaled down with the width keep the recurrence from amplifying float32 rounding.
    model = _model(gate, dtype, hidden_dim=70, weight_scale=0.25)
    _assert_the_kernel_equals_the_eager_loop(kernel, model, 3, 63, dtype)


def _assert_the_kernel_equals_the_eager_loop(kernel, model, batch: int, steps: int, dtype: torch.dtype) -> None:
    leaves = _inputs(model, batch, steps, dtype)
    fused = _run_and_differentiate(model, lambda *a: model._run_fused(*a, kernel), leaves)
    eager = _run_and_differentiate(model, model._run_eager, leaves)
    for name, value, expected in zip(_names(model), fused, eager, strict=True):
        assert value.dtype == expected.dtype == dtype, name
        if dtype == torch.float64:
            torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10, msg=name)
        else:  # float32 rounding differs between the two orders of summation, and grows along the sequence
            assert _rel_err(value, expected) <= 1e-4, name
    assert fused[0].abs().mean() > 1e-2  # the comparison is not between two near-zero outputs


@pytest.mark.parametrize("gate", GATE_TYPES)
def test_the_kernel_passes_gradcheck(kernel, gate):
    model = _model(gate, torch.float64, hidden_dim=4, input_dim=2)
    x, h_even, h_odd = _inputs(model, 2, 4, torch.float64)
    maps = [t.detach().requires_grad_() for t in model._step_maps(x)]
    weights = [
        p.detach().clone().requires_grad_()
        for p in (
            model.odd_recurrent.weight,
            model.readout_modulation.weight,
            model.readout_modulation.bias,
            model.readout.weight,
        )
    ]

    def recurrence(x, state_weight, static, odd_drive, odd_weight, modulation_weight, modulation_bias, readout, he, ho):
        predictions, state, gates, energies = seam_cpu_kernel.seam_recurrence(
            kernel,
            x,
            (state_weight, static, odd_drive),
            (odd_weight, modulation_weight, modulation_bias, readout),
            (he, ho),
            gate,
            model.temperature,
            model._constant_gate,
        )
        return predictions, *state, gates, energies

    assert torch.autograd.gradcheck(recurrence, (x, *maps, *weights, h_even, h_odd))


def test_under_cpu_autocast_the_kernel_runs_in_float32(kernel):
    model = _model("learned", torch.float32)
    x = torch.randn(2, 20, 3)
    expected = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_a_torch_function_mode_sees_the_eager_loop(kernel):
    # The audit's gate recorder reads every tanh and sigmoid; the kernel would hide them.
    model = _model("kstar", torch.float32)
    x = torch.randn(2, 7, 3)
    expected = model(x)
    with CountTanh() as mode:
        out = model(x)
    assert mode.calls == 2 * 7  # odd and even update per step
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "z2_seam: fused CPU kernel unavailable" in r.getMessage()]


def _eager_only(monkeypatch, model):
    """Make the fused path fail loudly, so a test sees that the eager loop ran."""

    def refuse(*args, **kwargs):
        raise AssertionError("the fused seam kernel ran although it is unavailable")

    monkeypatch.setattr(model, "_run_fused", refuse)


def test_a_failed_build_falls_back_to_the_eager_loop_with_one_logged_line(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernel_build, "compiler", lambda: "/nonexistent/c++")
    model = _model("learned", torch.float64)
    _eager_only(monkeypatch, model)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger=seam_cpu_kernel.__name__):
        outputs = [model(x) for _ in range(3)]
    assert len(_fallback_lines(caplog)) == 1 and "/nonexistent/c++" in _fallback_lines(caplog)[0]
    state = x.new_zeros(2, model.even_recurrent.in_features), x.new_zeros(2, model.odd_recurrent.in_features)
    torch.testing.assert_close(outputs[0], model._run_eager(x, *state, False)[0], rtol=0, atol=0)


def test_a_kernel_that_disagrees_with_the_eager_loop_is_not_used(monkeypatch, caplog):
    if cpu_kernel_build.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    wrong = seam_cpu_kernel.SeamKernel.forward

    def off_by_a_little(self, *args):
        states = wrong(self, *args)
        return (states[0], states[1], states[2], 1.001 * states[3], *states[4:])

    monkeypatch.setattr(seam_cpu_kernel.SeamKernel, "forward", off_by_a_little)
    seam_cpu_kernel.kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=seam_cpu_kernel.__name__):
            assert seam_cpu_kernel.kernel() is None
    finally:
        seam_cpu_kernel.kernel.cache_clear()
    assert "self-check failed: predictions (gate=" in _fallback_lines(caplog)[0]


def test_the_environment_switch_selects_the_eager_loop_without_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("SEAM_SEAM_KERNEL", "eager")
    seam_cpu_kernel.kernel.cache_clear()
    try:
        model = _model("kstar", torch.float32)
        _eager_only(monkeypatch, model)
        with caplog.at_level(logging.WARNING, logger=seam_cpu_kernel.__name__):
            model(torch.randn(2, 5, 3))
            assert seam_cpu_kernel.kernel() is None
    finally:
        seam_cpu_kernel.kernel.cache_clear()
    assert not _fallback_lines(caplog)


@pytest.mark.parametrize("gate", ["kstar", "learned"])
def test_in_float32_the_kernel_is_exactly_equivariant(kernel, gate):
    # Negation is exact in every product and sum, so only an odd function computed asymmetrically
    # (a tanh that is not exactly odd) could break the symmetry.
    model = _model(gate, torch.float32)
    x, h_even, h_odd = (leaf.detach() for leaf in _inputs(model, 3, 200, torch.float32))
    output, diagnostics, (final_even, final_odd) = model._run_fused(x, h_even, h_odd, True, kernel)
    flipped, flipped_diagnostics, (flipped_even, flipped_odd) = model._run_fused(-x, h_even, -h_odd, True, kernel)
    assert output.abs().mean() > 1e-3
    torch.testing.assert_close(flipped, -output, rtol=0, atol=0)
    torch.testing.assert_close(flipped_odd, -final_odd, rtol=0, atol=0)
    torch.testing.assert_close(flipped_even, final_even, rtol=0, atol=0)
    torch.testing.assert_close(flipped_diagnostics["gate"], diagnostics["gate"], rtol=0, atol=0)
