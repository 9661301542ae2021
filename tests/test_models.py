"""Registry behaviour, the model contract, exact Z2 equivariance and baseline initialisation."""

from __future__ import annotations

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


def _randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.7)


@pytest.mark.parametrize("gate", GATES)
def test_z2_seam_is_exactly_equivariant(gate):
    torch.manual_seed(0)
    model = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=32, gate=gate, temperature=0.3)
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
    assert torch.all(fixed(x, return_diagnostics=True)[1]["gate"] == 0.5)
    equiv = build_model("z2_equiv", input_dim=4, output_dim=4, hidden_dim=8)
    assert torch.all(equiv(x, return_diagnostics=True)[1]["gate"] == 0.0)
    kstar = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=8, gate="kstar", temperature=0.05)
    _, diag = kstar(x, return_diagnostics=True)
    # The k* gate at step t reads the parity energy of the state after step t-1 (zero state at t=0).
    previous = torch.cat([torch.zeros(2, 1), diag["parity_energy"][:, :-1]], dim=1)
    torch.testing.assert_close(diag["gate"], torch.sigmoid((previous - K_STAR) / 0.05))


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
