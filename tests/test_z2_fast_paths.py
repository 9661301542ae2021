"""Both z2_seam time loops (the fused CPU kernel and the eager step loop) equal its equations, and
z2_seam / z2_delta carry their state across chunks."""

from __future__ import annotations

import pytest
import torch
from conftest import check_chunks_equal_whole

from models import build_model
from models.parity import K_STAR, parity_energy

GATES = ["kstar", "learned", "fixed", "none"]


def _randomised(model: torch.nn.Module, seed: int, scale: float = 0.7) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)
    return model


def seam_reference(model, x: torch.Tensor, gate_reads_new_even: bool = False):
    """The z2_seam equations of models/z2_seam.py step by step, one plain op per term.

    `gate_reads_new_even` is a deliberately wrong variant (the learned gate reading h_even,t
    instead of h_even,{t-1}) for the negative control."""
    W_oo, U = model.odd_recurrent.weight, model.odd_input.weight
    W_ee, b, Q = model.even_recurrent.weight, model.even_recurrent.bias, model.even_input.weight
    G, c, V = model.readout_modulation.weight, model.readout_modulation.bias, model.readout.weight
    batch, steps, _ = x.shape
    h_even, h_odd = x.new_zeros(batch, W_ee.shape[0]), x.new_zeros(batch, W_oo.shape[0])
    predictions, gates, energies = [], [], []
    for t in range(steps):
        y = (h_odd * torch.sigmoid(h_even @ G.T + c)) @ V.T
        alpha = (h_odd**2).sum(-1) / ((h_odd**2).sum(-1) + (h_even**2).sum(-1) + 1e-8)
        x_t = x[:, t]
        e = torch.stack([(x_t * y).sum(-1), (x_t**2).sum(-1), (y**2).sum(-1), alpha], dim=-1)
        if model.gate_type == "kstar":
            g = torch.sigmoid((alpha - K_STAR) / model.temperature)
        elif model.gate_type == "learned":
            even_seen = torch.tanh(h_even @ W_ee.T + e @ Q.T + b) if gate_reads_new_even else h_even
            score = torch.cat([e, even_seen], -1) @ model.gate_score.weight[0] + model.gate_score.bias[0]
            g = torch.sigmoid(score / model.temperature)
        else:
            g = torch.full_like(alpha, model.fixed_gate if model.gate_type == "fixed" else 0.0)
        h_odd_new = torch.tanh(((1 - 2 * g)[:, None] * h_odd) @ W_oo.T + x_t @ U.T)
        h_even = torch.tanh(h_even @ W_ee.T + e @ Q.T + b)
        h_odd = h_odd_new
        predictions.append((h_odd * torch.sigmoid(h_even @ G.T + c)) @ V.T)
        gates.append(g)
        energies.append(parity_energy(h_even, h_odd))
    return torch.stack(predictions, 1), torch.stack(gates, 1), torch.stack(energies, 1)


@pytest.mark.parametrize("gate, options", [(gate, {}) for gate in GATES] + [("fixed", {"fixed_gate": 0.8})])
def test_fast_seam_loop_equals_the_plain_equations_in_float64(gate, options, seam_path):
    torch.manual_seed(0)
    model = _randomised(
        build_model(
            "z2_seam", input_dim=3, output_dim=3, hidden_dim=12, gate=gate, temperature=0.3, **options
        ).double(),
        seed=1,
    )
    x = torch.randn(4, 25, 3, dtype=torch.float64)
    out, diagnostics = model(x, return_diagnostics=True)
    expected, gates, energies = seam_reference(model, x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(diagnostics["gate"], gates, rtol=0, atol=1e-12)
    torch.testing.assert_close(diagnostics["parity_energy"], energies, rtol=0, atol=1e-12)
    # Gradients too: the fused maps are the same function of the same parameters.
    grads = torch.autograd.grad(out.pow(2).sum(), list(model.parameters()))
    grads_expected = torch.autograd.grad(expected.pow(2).sum(), list(model.parameters()))
    for g, ref in zip(grads, grads_expected):
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
    assert out.abs().mean() > 1e-3


def test_the_reference_comparison_sees_a_gate_reading_the_wrong_even_state():
    model = _randomised(
        build_model("z2_seam", input_dim=3, output_dim=3, hidden_dim=12, gate="learned", temperature=0.3).double(),
        seed=1,
    )
    x = torch.randn(4, 25, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    wrong, _, _ = seam_reference(model, x, gate_reads_new_even=True)
    assert (model(x) - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("gate", GATES)
def test_z2_seam_two_chunks_with_carried_state_equal_one_chunk_of_twice_the_length(gate, seam_path):
    model = _randomised(
        build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=12, gate=gate, temperature=0.3).double(), seed=3
    )
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(3, 30, 4, dtype=torch.float64, generator=generator)
    check_chunks_equal_whole(model, x, torch.randn_like(x), atol=1e-12)


@pytest.mark.parametrize("num_layers, use_parallel_scan", [(1, True), (2, True), (2, False)])
def test_z2_delta_two_chunks_with_carried_state_equal_one_chunk_of_twice_the_length(
    num_layers, use_parallel_scan, delta_path
):
    model = _randomised(
        build_model(
            "z2_delta",
            input_dim=4,
            output_dim=4,
            hidden_dim=16,
            delta_rank=3,
            num_layers=num_layers,
            temperature=0.5,
            use_parallel_scan=use_parallel_scan,
        ).double(),
        seed=5,
        scale=0.5,
    )
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(3, 40, 4, dtype=torch.float64, generator=generator)
    check_chunks_equal_whole(model, x, torch.randn_like(x), atol=1e-10)
    _, state = model.forward_with_state(x)
    assert len(state) == 3 * num_layers  # (h_odd, h_even, u_last) per block


def test_z2_delta_chunks_need_the_previous_input_not_only_the_states():
    # The invariants at a chunk's first step read u_{t-1}: carrying only (h_odd, h_even) is not exact.
    model = _randomised(
        build_model("z2_delta", input_dim=4, output_dim=4, hidden_dim=16, delta_rank=3, temperature=0.5).double(),
        seed=5,
        scale=0.5,
    )
    x = torch.randn(2, 20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    _, (h_odd, h_even, u_last) = model.forward_with_state(x[:, :10])
    second, _ = model.forward_with_state(x[:, 10:], (h_odd, h_even, torch.zeros_like(u_last)))
    assert (second[:, 0] - model(x)[:, 10]).abs().max() > 1e-6
