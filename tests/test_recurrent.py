"""The recurrent baselines: fused and cell paths agree, initialisation, LayerNorm, bidirectional."""

from __future__ import annotations

import pytest
import torch

from models import build_model
from train_hydra import ConfigError, train

FAMILIES = ["lstm", "gru", "rnn"]
HIDDEN = 8


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_kernel_and_cell_path_compute_the_same_function_of_the_same_weights(family, bidirectional):
    torch.manual_seed(0)
    model = (
        build_model(family, input_dim=5, output_dim=3, hidden_dim=HIDDEN, num_layers=2, bidirectional=bidirectional)
        .double()
        .eval()
    )
    for parameter in model.recurrent.parameters():  # biases start at 0: make them count
        parameter.data.normal_(0, 0.3)
    x = torch.randn(4, 9, 5, dtype=torch.float64, requires_grad=True)
    fused, cell = model(x), model(x, use_cell_path=True)
    torch.testing.assert_close(cell, fused, rtol=0, atol=1e-12)
    (fused_grad,) = torch.autograd.grad(fused.square().sum(), x)
    (cell_grad,) = torch.autograd.grad(cell.square().sum(), x)
    torch.testing.assert_close(cell_grad, fused_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_with_layer_norm_every_parameter_gets_a_gradient(family):
    torch.manual_seed(0)
    model = build_model(
        family, vocab_size=11, output_dim=11, hidden_dim=HIDDEN, num_layers=2, bidirectional=True, use_layer_norm=True
    )
    norms = [name for name, _ in model.named_parameters() if "norm" in name]
    assert norms and all(f"cells.{i}.recurrent_norm.weight" in norms for i in range(4))  # learnable affine
    model(torch.randint(0, 11, (3, 6))).square().sum().backward()
    starved = [
        name
        for name, parameter in model.named_parameters()
        if parameter.grad is None or parameter.grad.abs().sum() == 0
    ]
    assert starved == []


def test_layer_norm_changes_the_function_and_runs_the_cell_path():
    torch.manual_seed(0)
    plain = build_model("lstm", input_dim=4, output_dim=4, hidden_dim=HIDDEN)
    normed = build_model("lstm", input_dim=4, output_dim=4, hidden_dim=HIDDEN, use_layer_norm=True)
    normed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 5, 4)
    assert not torch.allclose(normed(x), plain(x))
    torch.testing.assert_close(normed(x), normed(x, use_cell_path=True))


def test_lstm_forget_gate_bias_starts_at_one_and_everything_else_at_zero():
    model = build_model("lstm", input_dim=4, output_dim=4, hidden_dim=HIDDEN, num_layers=2, bidirectional=True)
    rnn = model.recurrent
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        effective = getattr(rnn, f"bias_ih{suffix}") + getattr(rnn, f"bias_hh{suffix}")
        input_gate, forget_gate, cell_gate, output_gate = effective.detach().chunk(4)
        assert torch.equal(forget_gate, torch.ones(HIDDEN))
        assert not torch.cat([input_gate, cell_gate, output_gate]).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_recurrent_weights_are_orthogonal_per_gate_and_input_weights_xavier(family):
    model = build_model(family, input_dim=6, output_dim=4, hidden_dim=HIDDEN)
    for block in model.recurrent.weight_hh_l0.detach().split(HIDDEN):
        torch.testing.assert_close(block @ block.T, torch.eye(HIDDEN), atol=1e-5, rtol=0)
    bound = (6 / (6 + HIDDEN)) ** 0.5  # xavier_uniform of each (HIDDEN, 6) gate block
    weight_ih = model.recurrent.weight_ih_l0.detach()
    assert weight_ih.abs().max() <= bound and weight_ih.std() > bound / 3


def test_bidirectional_output_has_the_readout_shape_and_reads_the_future():
    model = build_model("gru", input_dim=4, output_dim=3, hidden_dim=HIDDEN, num_layers=2, bidirectional=True).eval()
    assert model.head.in_features == 2 * HIDDEN
    x = torch.randn(2, 7, 4)
    changed = x.clone()
    changed[:, -1] += 1.0
    assert model(x).shape == (2, 7, 3)
    assert not torch.allclose(model(x)[:, 0], model(changed)[:, 0])  # step 0 sees the last step
    causal = build_model("gru", input_dim=4, output_dim=3, hidden_dim=HIDDEN).eval()
    torch.testing.assert_close(causal(x)[:, :-1], causal(changed)[:, :-1])


def test_dropout_acts_between_layers_in_training_only_on_both_paths():
    torch.manual_seed(0)
    model = build_model(
        "lstm", input_dim=4, output_dim=4, hidden_dim=HIDDEN, num_layers=2, dropout=0.5, use_layer_norm=True
    )
    x = torch.randn(2, 5, 4)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_a_bidirectional_model_is_refused_for_next_step_prediction_and_accepted_for_windows(make_config):
    with pytest.raises(ConfigError, match=r"^model\.bidirectional=True .* refused for next-step prediction") as error:
        train(make_config(["model=lstm", "model.bidirectional=true", "data.target_mode=next_step", "debug=fdr"]))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^model\.bidirectional=True"):
        train(make_config(["model=gru", "model.bidirectional=true", "data=text", "debug=fdr"]))
    record = train(
        make_config(
            ["model=lstm", "model.bidirectional=true", "data.target_mode=last", "debug=fdr", "data.generator.T=600"]
        )
    )
    assert torch.isfinite(torch.tensor(record["metrics"]["val/mse"]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embedding_dim": 16}, "embedding_dim=16 applies to token inputs only"),
        ({"hidden_dim": 0}, "hidden_dim=0 must be >= 1"),
        ({"dropout": 1.0}, r"dropout=1.0 must lie in \[0, 1\)"),
    ],
)
def test_impossible_options_fail_in_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("rnn", input_dim=4, output_dim=4, **kwargs)
