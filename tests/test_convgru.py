"""convgru: the reset gate and candidate by hand, parameter savings of depthwise and grouped
convolutions, the options' behaviour, and training through the composed config on antipodal_field."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from models import build_model
from models.convgru import SeparableConv2d, channel_mixing_weight, norm_groups
from train_hydra import ConfigError, build_module, instantiate_from, train

FIELD = (1, 6, 6)


def convgru(input_shape=FIELD, output_dim=None, **kwargs) -> nn.Module:
    channels, height, width = input_shape
    return build_model(
        "convgru",
        input_shape=input_shape,
        output_dim=channels * height * width if output_dim is None else output_dim,
        **kwargs,
    )


def randomised(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)
    return model


def conv_by_hand(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-padded 'same' cross-correlation of one field x (C_in, H, W), written out as loops."""
    out_channels, in_channels, k, _ = weight.shape
    pad, (height, width) = k // 2, x.shape[1:]
    out = torch.zeros(out_channels, height, width, dtype=x.dtype)
    for o, i, j in itertools.product(range(out_channels), range(height), range(width)):
        total = bias[o].item() if bias is not None else 0.0
        for c, a, b in itertools.product(range(in_channels), range(k), range(k)):
            row, col = i + a - pad, j + b - pad
            if 0 <= row < height and 0 <= col < width:
                total += weight[o, c, a, b].item() * x[c, row, col].item()
        out[o, i, j] = total
    return out


def test_one_step_matches_a_hand_computation_with_the_reset_gate_inside_the_candidate():
    hidden = 2
    model = randomised(convgru((1, 3, 4), hidden_channels=hidden, learnable_h0=True), seed=0).double()
    cell = model.layers[0]
    x = torch.randn(1, 1, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h0 = cell.h0.detach()
    states, updates, resets = cell(x)

    W, b = cell.input_conv.weight.detach(), cell.input_conv.bias.detach()  # rows: update, reset, candidate
    U = cell.gate_conv.weight.detach()  # rows: update, reset
    U_candidate = cell.candidate_conv.weight.detach()
    rows = lambda part: slice(part * hidden, (part + 1) * hidden)  # noqa: E731
    x0 = x[0, 0]
    z = torch.sigmoid(conv_by_hand(x0, W[rows(0)], b[rows(0)]) + conv_by_hand(h0, U[rows(0)]))
    r = torch.sigmoid(conv_by_hand(x0, W[rows(1)], b[rows(1)]) + conv_by_hand(h0, U[rows(1)]))
    candidate = torch.tanh(conv_by_hand(x0, W[rows(2)], b[rows(2)]) + conv_by_hand(r * h0, U_candidate))
    expected = (1 - z) * h0 + z * candidate
    torch.testing.assert_close(states[0, 0], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(updates[0, 0], z, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(resets[0, 0], r, rtol=1e-10, atol=1e-12)
    # The classic bug, r applied after the recurrent convolution, is a different function.
    buggy = torch.tanh(conv_by_hand(x0, W[rows(2)], b[rows(2)]) + r * conv_by_hand(h0, U_candidate))
    assert (((1 - z) * h0 + z * buggy) - states[0, 0]).abs().max() > 1e-3


def test_reset_gate_matters_forcing_it_to_0_and_to_1_gives_different_outputs():
    model = randomised(convgru(hidden_channels=4, learnable_h0=True), seed=2).double()
    cell, hidden = model.layers[0], 4
    x = torch.randn(2, 3, *FIELD, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def run(reset_bias: float, h0: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            cell.input_conv.bias[hidden : 2 * hidden] = reset_bias  # r = sigmoid(+-40) = 1 or 0
            cell.input_conv.bias[:hidden] = 40.0  # z = 1: the state is the candidate
            cell.h0.copy_(h0)
        return model(x)

    h0_a, h0_b = torch.randn(2, 4, *FIELD[1:], dtype=torch.float64)
    closed, opened = run(-40.0, h0_a), run(40.0, h0_a)
    assert (closed - opened).abs().max() > 1e-2
    # With r = 0 the candidate reads no state, so the first step does not depend on h0 at all;
    # with r = 1 it does.
    torch.testing.assert_close(run(-40.0, h0_b)[:, 0], closed[:, 0], rtol=0, atol=1e-12)
    assert (run(40.0, h0_b)[:, 0] - opened[:, 0]).abs().max() > 1e-2


def test_depthwise_separable_cuts_parameters_by_at_least_80_percent_at_hidden_256_kernel_3():
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    standard = convgru((1, 8, 8), hidden_channels=256, kernel_size=3)
    depthwise = convgru((1, 8, 8), hidden_channels=256, kernel_size=3, use_depthwise=True)
    assert count(depthwise) <= 0.2 * count(standard), (count(depthwise), count(standard))
    assert isinstance(depthwise.layers[0].gate_conv, SeparableConv2d)
    assert depthwise.layers[0].gate_conv.depthwise.groups == 256
    x = torch.randn(1, 2, 1, 8, 8)
    assert depthwise(x).shape == standard(x).shape == (1, 2, 1, 8, 8)


@pytest.mark.parametrize("use_depthwise", [False, True])
@pytest.mark.parametrize("num_groups", [2, 4])
def test_grouped_convolutions_divide_the_gate_conv_parameters_by_num_groups(num_groups, use_depthwise):
    dense = convgru(hidden_channels=16, use_depthwise=use_depthwise)
    grouped = convgru(hidden_channels=16, use_depthwise=use_depthwise, use_grouped=True, num_groups=num_groups)
    for name in ("gate_conv", "candidate_conv"):
        dense_weight = channel_mixing_weight(getattr(dense.layers[0], name))
        grouped_weight = channel_mixing_weight(getattr(grouped.layers[0], name))
        assert grouped_weight.numel() * num_groups == dense_weight.numel()
    gate_params = lambda model: sum(  # noqa: E731
        p.numel() for name in ("gate_conv", "candidate_conv") for p in getattr(model.layers[0], name).parameters()
    )
    if not use_depthwise:
        assert gate_params(grouped) * num_groups == gate_params(dense)
    # The input convolution stays dense, so every group still sees the whole field.
    dense_input, grouped_input = (channel_mixing_weight(model.layers[0].input_conv) for model in (dense, grouped))
    assert grouped_input.shape == dense_input.shape


def test_grouped_state_blocks_only_read_their_own_group():
    cell = randomised(convgru(hidden_channels=8, use_grouped=True, num_groups=2), seed=3).layers[0]
    h = torch.randn(1, 8, *FIELD[1:])
    changed = h.clone()
    changed[:, 4:] += 1.0  # perturb group 1 only
    before = cell.split_gates(cell.gate_conv(h), 2)
    after = cell.split_gates(cell.gate_conv(changed), 2)
    for gate_before, gate_after in zip(before, after):
        torch.testing.assert_close(gate_after[:, :4], gate_before[:, :4])  # group 0 unchanged
        assert (gate_after[:, 4:] - gate_before[:, 4:]).abs().max() > 1e-3


def test_learnable_h0_receives_gradient_in_every_layer():
    model = convgru(hidden_channels=4, num_layers=2, learnable_h0=True)
    model(torch.randn(2, 3, *FIELD)).pow(2).sum().backward()
    for layer in model.layers:
        assert layer.h0.grad is not None and layer.h0.grad.abs().sum() > 0
    assert all(layer.h0 is None for layer in convgru(hidden_channels=4, num_layers=2).layers)
    assert not any("h0" in name for name, _ in convgru(hidden_channels=4).named_parameters())


@pytest.mark.parametrize("hidden, groups", [(6, 6), (16, 16), (48, 24), (64, 32)])
def test_group_norm_is_present_when_requested_with_a_group_count_that_divides_the_channels(hidden, groups):
    assert norm_groups(hidden) == groups
    with_norm = convgru(hidden_channels=hidden, num_layers=2, use_layer_norm=True)
    norms = [m for m in with_norm.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 * 2  # update, reset and candidate pre-activations of each layer
    assert all(norm.num_groups == groups and norm.num_channels == hidden for norm in norms)
    assert with_norm.layers[0].input_conv.bias is None  # GroupNorm's shift is the bias
    without = convgru(hidden_channels=hidden, num_layers=2)
    assert not any(isinstance(m, nn.GroupNorm) for m in without.modules())


def test_residual_with_mismatched_channels_fails_at_build_time_in_one_sentence():
    with pytest.raises(ValueError) as error:
        convgru((1, 6, 6), hidden_channels=8, use_residual=True)
    message = str(error.value)
    assert message.startswith("use_residual=True") and "\n" not in message
    assert "1 channels" in message and "hidden_channels=8" in message


def test_residual_with_matching_channels_adds_each_layer_input_to_its_state():
    residual = randomised(convgru((4, 6, 6), hidden_channels=4, num_layers=2, use_residual=True), seed=4)
    plain = convgru((4, 6, 6), hidden_channels=4, num_layers=2)
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 3, 4, 6, 6)
    outputs, _, _ = residual.layers[0](x)
    states, _, _ = plain.layers[0](x)
    torch.testing.assert_close(outputs, states + x)


def test_state_clamp_applies_in_training_only():
    cell = randomised(convgru(hidden_channels=4, learnable_h0=True, grad_clip_val=0.1), seed=5, scale=2.0).layers[0]
    x = torch.randn(2, 5, *FIELD)
    assert cell.train()(x)[0].abs().max() <= 0.1
    assert cell.eval()(x)[0].abs().max() > 0.1


def test_input_weights_are_kaiming_and_recurrent_weight_blocks_orthogonal():
    torch.manual_seed(0)
    cell = convgru((16, 6, 6), hidden_channels=32).layers[0]
    weight = cell.input_conv.weight
    fan_in = weight[0].numel()
    assert weight.std().item() == pytest.approx(fan_in**-0.5, rel=0.05)
    for conv in (cell.gate_conv, cell.candidate_conv):
        for block in conv.weight.detach().split(32):
            rows = block.flatten(1)
            torch.testing.assert_close(rows @ rows.T, torch.eye(32), atol=1e-5, rtol=0)
    separable = convgru(hidden_channels=8, use_depthwise=True).layers[0].gate_conv
    centre_only = torch.zeros(3, 3)
    centre_only[1, 1] = 1.0
    assert all(torch.equal(kernel[0], centre_only) for kernel in separable.depthwise.weight)  # identity start


def test_forward_contract_heads_and_the_spatially_averaged_update_gate():
    model = randomised(convgru(hidden_channels=4, num_layers=2), seed=6)
    x = torch.randn(3, 5, *FIELD)
    prediction, diagnostics = model(x, return_diagnostics=True)
    assert prediction.shape == (3, 5, *FIELD)
    torch.testing.assert_close(model(x), prediction)
    _, first_updates, _ = model.layers[0](x)
    torch.testing.assert_close(diagnostics["update_gate_layer1"], first_updates.mean(dim=(2, 3, 4)))
    assert set(diagnostics) == {"gate", "reset_gate", "update_gate_layer1", "update_gate_layer2"}
    layer_mean = (diagnostics["update_gate_layer1"] + diagnostics["update_gate_layer2"]) / 2
    torch.testing.assert_close(diagnostics["gate"], layer_mean)
    assert all(value.shape == (3, 5) and ((value > 0) & (value < 1)).all() for value in diagnostics.values())
    vector = convgru(hidden_channels=4, output_dim=4)
    assert vector(x).shape == (3, 5, 4) and not vector.predicts_field
    with pytest.raises(ValueError, match=r"^x has shape \(3, 5, 1, 5, 6\)"):
        model(torch.randn(3, 5, 1, 5, 6))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel_size": 4}, "kernel_size=4 must be an odd positive integer"),
        ({"hidden_channels": 0}, "hidden_channels=0 must be >= 1"),
        ({"num_layers": 0}, "num_layers=0 must be >= 1"),
        ({"use_grouped": True, "num_groups": 3, "hidden_channels": 16}, "num_groups=3 must divide hidden_channels=16"),
        ({"use_grouped": True, "num_groups": 1}, "num_groups=1 with use_grouped=True is a dense convolution"),
        ({"grad_clip_val": 0.0}, "grad_clip_val=0.0 must be > 0"),
        ({"input_shape": (1, 6)}, r"input_shape=\[1, 6\] must be \(channels, height, width\)"),
    ],
)
def test_impossible_hyperparameters_fail_in_one_sentence(kwargs, message):
    kwargs = {"input_shape": FIELD, "output_dim": 36, **kwargs}
    with pytest.raises(ValueError, match=f"^{message}") as error:
        build_model("convgru", **kwargs)
    assert "\n" not in str(error.value)


SMALL_FIELD = [
    "model=convgru",
    "data=antipodal_field",
    "data.generator.T=600",
    "data.batch_size=16",
    "data.grid_size=8",
    "model.hidden_channels=4",
]


def test_fast_dev_run_predicting_the_next_observation_vector(make_config):
    record = train(make_config([*SMALL_FIELD, "data.target=observation", "debug=fdr"]))
    assert all(torch.isfinite(torch.tensor(record["metrics"][key])) for key in ("val/mse", "test/mse", "val/mse_zero"))


def test_residual_mismatch_stops_the_run_with_a_config_error_naming_the_key(make_config):
    with pytest.raises(ConfigError, match=r"^model\.use_residual=True .* 1 channels and hidden_channels=4"):
        train(make_config([*SMALL_FIELD, "model.use_residual=true", "debug=fdr"]))


def test_a_short_run_lowers_the_val_loss_well_below_the_untrained_model_and_predicting_zero(make_config):
    # 30x the default process noise: the field's dynamics stand out of the pixel noise, so there is
    # something to learn in a few epochs (at the default level the best filter is 5% below zero).
    cfg = make_config(
        [
            *SMALL_FIELD,
            "data.generator.T=1200",
            "data.generator.sigma_epsilon=0.3",
            "data.target_mode=next_step",
            "model.hidden_channels=8",
            "optim.learning_rate=1e-2",
            "trainer.max_epochs=3",
            "trainer.accelerator=cpu",
            "callbacks=none",
            "logger=none",
            "test=false",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ]
    )
    # train() seeds, builds the data and then the module: the same steps give the untrained weights.
    pl.seed_everything(cfg.seed)
    datamodule = instantiate_from(cfg, "data")
    untrained = build_module(cfg, datamodule).eval()
    datamodule.setup("validate")
    with torch.no_grad():
        batches = list(datamodule.val_dataloader())
        squared_error = sum(
            nn.functional.mse_loss(untrained.scored_prediction(batch["x"]), batch["y"], reduction="sum")
            for batch in batches
        )
    untrained_loss = squared_error.item() / sum(batch["y"].numel() for batch in batches)

    metrics = train(cfg)["metrics"]
    # Measured: about 0.54 of both (the untrained model is close to predicting zero).
    assert metrics["val/loss"] < 0.75 * untrained_loss, (metrics["val/loss"], untrained_loss)
    assert metrics["val/loss"] < 0.75 * metrics["val/mse_zero"], metrics


def test_gate_heatmap_callback_draws_the_spatially_averaged_update_gate(make_config):
    cfg = make_config([*SMALL_FIELD, "callbacks=heatmap", "debug=fdr", "callbacks.rich_progress_bar=null"])
    train(cfg)
    figures = Path(cfg.paths.output_dir) / "figures"
    assert (figures / "final" / "gate_heatmap.png").is_file()
    saved = torch.load(figures / "diagnostics.pt", weights_only=True)
    gate = saved["diagnostics"]["final"]["gate"]
    assert gate.shape == saved["steps"].shape and ((gate > 0) & (gate < 1)).all()
