"""resnet_convgru: RMSNorm by its formula with trained gamma and beta, the SiLU Kaiming init, identity
residual blocks at init, the channel progression, depthwise savings, weight norm and its refusal with
depthwise, and the three model configs training through the composed config."""

from __future__ import annotations

import math

import pytest
import torch

from models import build_model
from models.resnet_convgru import LEAKY_SLOPE, ResBlock, RMSNorm
from train_hydra import ConfigError, train

FIELD = (1, 8, 8)


def resnet(**kwargs):
    options = {"channels": [8, 16], "hidden_channels": 8, **kwargs}
    return build_model("resnet_convgru", input_shape=FIELD, output_dim=64, **options)


def frames(batch=2, steps=3, seed=0):
    return torch.randn(batch, steps, *FIELD, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm_dims", [(1,), (1, 2, 3)])
def test_rms_norm_follows_its_formula_and_its_gamma_and_beta_get_gradients(norm_dims):
    norm = RMSNorm(5, norm_dims, eps=1e-4)
    with torch.no_grad():
        norm.gamma.copy_(torch.arange(1.0, 6.0))
        norm.beta.copy_(torch.arange(5.0) / 10)
    x = torch.randn(3, 5, 4, 4)
    rms = torch.sqrt(x.pow(2).mean(dim=norm_dims, keepdim=True) + 1e-4)
    expected = x / rms * norm.gamma.view(1, 5, 1, 1) + norm.beta.view(1, 5, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    (norm(x) * torch.randn(3, 5, 4, 4)).sum().backward()
    assert norm.gamma.grad.abs().min() > 0 and norm.beta.grad.abs().min() > 0


def test_rms_norm_without_affine_has_no_parameters_and_unit_rms():
    norm = RMSNorm(4, (1,), affine=False)
    assert not list(norm.parameters())
    out = norm(torch.randn(2, 4, 3, 3) * 7)
    torch.testing.assert_close(out.pow(2).mean(dim=1), torch.ones(2, 3, 3), atol=1e-3, rtol=0)


def test_model_norms_take_the_configured_eps_and_affine_and_the_final_gammas_learn():
    model = resnet(norm_eps=1e-3)
    norms = [m for m in model.encoder.modules() if isinstance(m, RMSNorm)]
    assert norms and all(n.eps == 1e-3 and n.gamma is not None for n in norms)
    assert not any(isinstance(m, RMSNorm) and m.gamma is not None for m in resnet(norm_affine=False).modules())
    model(frames()).pow(2).mean().backward()
    finals = [block.final_norm for block in model.encoder.modules() if isinstance(block, ResBlock)]
    # Zero gamma: the branch is off, yet gamma (and beta) still learn from the identity path.
    assert all(n.gamma.grad.abs().sum() > 0 and n.beta.grad.abs().sum() > 0 for n in finals)


def test_kaiming_silu_init_gives_the_leaky_relu_fan_out_scale():
    model = build_model("resnet_convgru", input_shape=FIELD, output_dim=64, channels=[64, 128], hidden_channels=4)
    conv = model.encoder.layers[2].conv  # the 64 -> 128 width change: 128 * 9 fan_out
    expected = math.sqrt(2 / (1 + LEAKY_SLOPE**2)) / math.sqrt(128 * 9)
    assert abs(conv.weight.std().item() / expected - 1) < 0.03
    default = (
        build_model(
            "resnet_convgru",
            input_shape=FIELD,
            output_dim=64,
            channels=[64, 128],
            hidden_channels=4,
            kaiming_silu_init=False,
        )
        .encoder.layers[2]
        .conv
    )
    # PyTorch's default (kaiming_uniform, a = sqrt 5): std 1 / sqrt(3 fan_in), fan_in = 64 * 9.
    assert abs(default.weight.std().item() * math.sqrt(3 * 64 * 9) - 1) < 0.03


def test_every_residual_block_is_the_identity_at_init_only_with_zero_init():
    x = torch.randn(4, 16, 8, 8)
    blocks = [m for m in resnet().encoder.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2
    for block in blocks:
        width = block.final_norm.num_features
        torch.testing.assert_close(block(x[:, :width]), x[:, :width], rtol=0, atol=0)
    plain = [m for m in resnet(zero_init_residual=False).encoder.modules() if isinstance(m, ResBlock)]
    assert not torch.allclose(plain[0](x[:, :8]), x[:, :8])


def test_channels_set_the_stage_widths_and_the_encoder_keeps_the_grid():
    model = resnet(channels=[4, 8, 12])
    widths = [m.final_norm.num_features for m in model.encoder.modules() if isinstance(m, ResBlock)]
    assert widths == [4, 8, 12]
    assert model.encoder(torch.randn(2, *FIELD)).shape == (2, 12, 8, 8)
    prediction, diagnostics = model(frames(), return_diagnostics=True)
    assert prediction.shape == (2, 3, *FIELD) and diagnostics["gate"].shape == (2, 3)


def test_depthwise_separable_cuts_the_parameters_by_at_least_80_percent_at_the_seed_widths():
    def count(**options):
        model = build_model(
            "resnet_convgru",
            input_shape=(1, 16, 16),
            output_dim=256,
            channels=[64, 128, 256],
            hidden_channels=256,
            **options,
        )
        return sum(p.numel() for p in model.parameters())

    assert 1 - count(conv_params={"type": "depthwise"}, use_depthwise=True) / count() >= 0.8


def test_weight_norm_reparametrises_every_encoder_conv_and_keeps_the_initial_function():
    torch.manual_seed(0)
    plain = resnet(zero_init_residual=False)
    torch.manual_seed(0)
    normed = resnet(zero_init_residual=False, use_weight_norm=True)
    convs = [m for m in normed.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(conv, "weight") for conv in convs)
    torch.testing.assert_close(normed(frames()), plain(frames()), rtol=1e-5, atol=1e-5)


def test_weight_norm_with_depthwise_is_refused_in_one_sentence(make_config):
    with pytest.raises(
        ConfigError, match=r"^model\.use_weight_norm=True works with conv_params\.type=standard"
    ) as error:
        train(make_config(["model=resnet_convgru_depthwise", "model.use_weight_norm=true", *SMALL_FIELD[1:]]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"conv_params": {"type": "grouped"}}, "conv_params.type='grouped' is not allowed"),
        ({"conv_params": {"stride": 2}}, "conv_params has unknown key"),
        ({"channels": []}, "channels=[] must be"),
        ({"conv_params": {"kernel_size": 4}}, "conv_params.kernel_size=4 must be an odd"),
    ],
)
def test_impossible_options_fail_in_one_sentence(kwargs, message):
    with pytest.raises(ValueError) as error:
        resnet(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


SMALL_FIELD = [
    "model=resnet_convgru",
    "data=antipodal_field",
    "data.generator.T=600",
    "data.batch_size=16",
    "data.grid_size=8",
    "model.channels=[4,8]",
    "model.hidden_channels=4",
    "debug=fdr",
]


@pytest.mark.parametrize("model", ["resnet_convgru", "resnet_convgru_depthwise", "resnet_convgru_standard_weight_norm"])
def test_each_seed_config_trains_through_the_composed_config(make_config, model):
    cfg = make_config([f"model={model}", *SMALL_FIELD[1:]])
    record = train(cfg)
    assert math.isfinite(record["metrics"]["val/mse"]) and record["model"] == "resnet_convgru"
