"""Registry behaviour, the model contract, CUDA against CPU, exact Z2 equivariance and baseline initialisation."""

from __future__ import annotations

import copy

import pytest
import torch

from models import build_model, check_task, list_models
from models.parity import K_STAR, parity_energy

GATES = ["kstar", "learned", "fixed", "none"]


def test_registry_lists_the_configured_models():
    assert {"z2_seam", "z2_equiv", "z2_delta", "lstm", "gru"} <= set(list_models())


def test_unknown_model_lists_registered_names():
    with pytest.raises(ValueError, match="not registered; choose one of: .*z2_seam"):
        build_model("nonexistent", input_dim=4, output_dim=4)


def test_unknown_argument_names_it_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"^delta_rank is not an option of model 'lstm'; it takes: .*hidden_dim"):
        build_model("lstm", input_dim=4, output_dim=4, delta_rank=3)


def test_unsupported_task_names_model_data_and_alternatives():
    with pytest.raises(ValueError, match=r"model 'z2_seam' does not fit the 'seq2seq' task of data=x.*models that fit"):
        check_task("z2_seam", "seq2seq", "data=x")


@pytest.mark.parametrize("name", ["z2_seam", "z2_equiv", "z2_delta", "lstm", "gru"])
def test_forward_contract(name):
    model = build_model(name, input_dim=4, output_dim=4, hidden_dim=16)
    x = torch.randn(3, 7, 4)
    prediction = model(x)
    assert prediction.shape == (3, 7, 4)
    prediction2, diagnostics = model(x, return_diagnostics=True)
    torch.testing.assert_close(prediction, prediction2)
    if name.startswith("z2"):
        assert diagnostics["gate"].shape == diagnostics["parity_energy"].shape == (3, 7)
        assert ((diagnostics["parity_energy"] >= 0) & (diagnostics["parity_energy"] <= 1)).all()
    else:  # no gates; the hidden state for the regime probe
        assert set(diagnostics) == {"state"} and diagnostics["state"].shape == (3, 7, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["z2_seam", "z2_equiv", "z2_delta", "lstm", "gru"])
def test_cuda_computes_the_cpu_outputs_and_gradients(name):
    """The CUDA paths (z2_delta's Triton scan, the seam models' step loop, cuDNN) against the CPU
    ones (the fused C++ kernels, oneDNN), in float64 so that only a wrong path can differ."""
    torch.manual_seed(0)
    cpu_model = build_model(name, input_dim=4, output_dim=4, hidden_dim=16).double()
    cuda_model = copy.deepcopy(cpu_model).cuda()
    x = torch.randn(3, 300, 4, dtype=torch.float64)
    upstream = torch.randn(3, 300, 4, dtype=torch.float64)
    cpu_out, cuda_out = cpu_model(x), cuda_model(x.cuda())
    cpu_out.backward(upstream)
    cuda_out.backward(upstream.cuda())
    torch.testing.assert_close(cuda_out.cpu(), cpu_out, rtol=1e-9, atol=1e-12)
    for (parameter_name, on_cpu), on_cuda in zip(cpu_model.named_parameters(), cuda_model.parameters()):
        torch.testing.assert_close(on_cuda.grad.cpu(), on_cpu.grad, rtol=1e-9, atol=1e-12, msg=parameter_name)


def _randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.7)


@pytest.mark.parametrize("gate, options", [(gate, {}) for gate in GATES] + [("fixed", {"fixed_gate": 0.8})])
def test_z2_seam_is_exactly_equivariant(gate, options, seam_path):
    torch.manual_seed(0)
    model = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=32, gate=gate, temperature=0.3, **options)
    _randomise(model)
    x = torch.randn(5, 40, 4, dtype=torch.float64)
    model = model.double()
    out, diag = model(x, return_diagnostics=True)
    out_flipped, diag_flipped = model(-x, return_diagnostics=True)
    torch.testing.assert_close(out_flipped, -out, rtol=0, atol=1e-12)
    torch.testing.assert_close(diag_flipped["gate"], diag["gate"], rtol=0, atol=1e-12)
    torch.testing.assert_close(diag_flipped["parity_energy"], diag["parity_energy"], rtol=0, atol=1e-12)
    # The symmetry is not trivial: the output really depends on x and the gate really varies.
    assert out.abs().mean() > 1e-3
    if gate in ("kstar", "learned"):
        assert diag["gate"].std() > 1e-3


def test_gate_values_follow_their_definitions():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 4)
    fixed = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=8, gate="fixed")
    assert torch.all(fixed(x, return_diagnostics=True)[1]["gate"] == 0.1)
    chosen = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=8, gate="fixed", fixed_gate=0.9)
    assert torch.all(chosen(x, return_diagnostics=True)[1]["gate"] == 0.9)
    equiv = build_model("z2_equiv", input_dim=4, output_dim=4, hidden_dim=8)
    assert torch.all(equiv(x, return_diagnostics=True)[1]["gate"] == 0.0)
    kstar = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=8, gate="kstar", temperature=0.05)
    _, diag = kstar(x, return_diagnostics=True)
    # The k* gate at step t reads the parity energy of the state after step t-1 (zero state at t=0).
    previous = torch.cat([torch.zeros(2, 1), diag["parity_energy"][:, :-1]], dim=1)
    torch.testing.assert_close(diag["gate"], torch.sigmoid((previous - K_STAR) / 0.05))


def test_learned_gate_reads_the_even_state():
    # The learned gate is sigmoid((w . e_t + u . h_even,{t-1} + b) / T): with w = 0 and b = 0 it is
    # sigmoid(u . h_even,{t-1} / T), which this recomputes from a hand-written even recurrence.
    torch.manual_seed(2)
    model = build_model("z2_seam", input_dim=3, output_dim=3, hidden_dim=8, gate="learned", temperature=0.5).double()
    with torch.no_grad():
        model.gate_score.weight.zero_()
        model.gate_score.weight[0, 4:] = torch.randn(4, dtype=torch.float64)
        model.gate_score.bias.zero_()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    gate = model(x, return_diagnostics=True)[1]["gate"]
    assert gate.std() > 1e-3  # h_even changes along the sequence and so does the gate
    torch.testing.assert_close(gate[:, 0], torch.full((2,), 0.5, dtype=torch.float64))  # h_even,{-1} = 0
    even_weights = model.gate_score.weight[0, 4:]
    h_even = torch.zeros(2, 4, dtype=torch.float64)
    h_odd = torch.zeros(2, 4, dtype=torch.float64)
    for t in range(6):
        torch.testing.assert_close(gate[:, t], torch.sigmoid(h_even @ even_weights / 0.5))
        y = model._readout(h_even, h_odd)
        e = torch.stack(
            [(x[:, t] * y).sum(-1), x[:, t].pow(2).sum(-1), y.pow(2).sum(-1), parity_energy(h_even, h_odd)], -1
        )
        h_odd = torch.tanh(model.odd_recurrent((1 - 2 * gate[:, t, None]) * h_odd) + model.odd_input(x[:, t]))
        h_even = torch.tanh(model.even_recurrent(h_even) + model.even_input(e))


@pytest.mark.parametrize("name, options", [("z2_seam", {"gate": gate}) for gate in GATES] + [("z2_equiv", {})])
def test_every_parameter_of_the_seam_models_reaches_the_output(name, options):
    # num_parameters counts the even half of the state: it must influence the prediction.
    torch.manual_seed(3)
    model = build_model(name, input_dim=4, output_dim=4, hidden_dim=8, **options)
    model(torch.randn(3, 12, 4)).pow(2).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert unused == []


@pytest.mark.parametrize("fixed_gate", [0.0, 0.1, 0.9, 1.0])
def test_fixed_gate_keeps_a_memory_of_earlier_inputs(fixed_gate):
    # At g = 0.5 the odd state forgot everything but x_t; any allowed constant keeps earlier steps.
    torch.manual_seed(4)
    model = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=16, gate="fixed", fixed_gate=fixed_gate)
    x = torch.randn(2, 8, 4, requires_grad=True)
    model(x)[:, -1].sum().backward()
    assert x.grad[:, 0].abs().max() > 1e-4


def test_parity_energy_definition():
    even, odd = torch.tensor([[3.0, 0.0]]), torch.tensor([[4.0, 0.0]])
    torch.testing.assert_close(parity_energy(even, odd), torch.tensor([16.0 / 25.0]))
    assert K_STAR == pytest.approx(0.7213, abs=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gate": "sometimes"}, "gate='sometimes' is not a gate type"),
        ({"hidden_dim": 7}, "hidden_dim=7 is not allowed"),
        ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
        ({"output_dim": 3}, "output_dim=3 must equal input_dim=4"),
        ({"gate": "fixed", "fixed_gate": 0.5}, r"^fixed_gate=0.5 must lie in \[0, 0.45\] or \[0.55, 1\]"),
        ({"gate": "fixed", "fixed_gate": 1.5}, r"^fixed_gate=1.5 must lie in"),
        ({"gate": "learned", "fixed_gate": 0.2}, r"^fixed_gate=0.2 applies only to gate='fixed'"),
    ],
)
def test_z2_seam_rejects_impossible_hyperparameters(kwargs, message):
    arguments = {"input_dim": 4, "output_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model("z2_seam", **arguments)


def test_lstm_initialisation():
    model = build_model("lstm", input_dim=4, output_dim=4, hidden_dim=16, num_layers=2)
    for layer in range(2):
        bias_ih = getattr(model.recurrent, f"bias_ih_l{layer}")
        bias_hh = getattr(model.recurrent, f"bias_hh_l{layer}")
        assert torch.all(bias_ih[16:32] == 1.0) and torch.all(bias_ih[:16] == 0) and torch.all(bias_ih[32:] == 0)
        assert torch.all(bias_hh == 0)
        recurrent = getattr(model.recurrent, f"weight_hh_l{layer}")
        for block in recurrent.split(16):
            torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_baselines_reject_bad_arguments(name):
    with pytest.raises(ValueError, match="dropout=1.5 must lie in"):
        build_model(name, input_dim=4, output_dim=4, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_dim=0 must be >= 1"):
        build_model(name, input_dim=4, output_dim=4, hidden_dim=0)
