"""ResNet + ConvGRU (`resnet_convgru`): a ResNet encoder turns every field frame into feature maps,
a ConvGRU stack (models/convgru.py) runs over those maps, and a head predicts the next field.

Encoder, applied to each frame on its own (the grid size is kept, so the ConvGRU sees every pixel):
    stem:   ConvBlock(C -> channels[0])
    stage i: ConvBlock(channels[i-1] -> channels[i]) when the width changes, then `blocks_per_stage`
            ResBlocks at channels[i]
    ConvBlock(x) = SiLU(Norm(Conv(x)))
    ResBlock(x)  = x + Norm_2(Conv_2(SiLU(Norm_1(Conv_1(x)))))
Options (each a model config key):
- RMSNorm(num_features, norm_dims, eps=1e-4, affine=True): x / sqrt(mean over norm_dims of x^2 + eps),
  then gamma * . + beta per channel when `norm_affine` (else no parameters).
- `kaiming_silu_init`: Kaiming-normal (fan_out, leaky_relu with a = 0.01, a close match to SiLU's
  slope near 0) for every encoder convolution; else PyTorch's default init.
- `zero_init_residual`: gamma = 0 in each ResBlock's final norm, so that each block is the identity
  at initialisation and the encoder starts as its stem and width changes.
- `conv_params.type`: `standard` k x k convolutions or `depthwise` separable ones (k x k per channel,
  then a 1 x 1 mix: about 1/k^2 of the weights at large widths).
- `use_weight_norm`: weight normalisation w = g v / ||v|| of every standard encoder convolution; a
  separable convolution has two small factors and no single weight to normalise, so it is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from models.contract import SequenceModel
from models.convgru import make_conv, prediction_head, run_stack, stack_cells
from models.registry import register_model

CONV_TYPES = ("standard", "depthwise")
CONV_PARAM_KEYS = ("type", "kernel_size")
LEAKY_SLOPE = 0.01


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2 over `norm_dims`) + eps), with a per-channel scale gamma and shift beta
    (channel axis 1) when `affine`.

    norm_dims=(1,) normalises each pixel over its channels; (1, 2, 3) each frame over all its values.
    """

    def __init__(
        self, num_features: int, norm_dims: tuple[int, ...] = (1,), eps: float = 1e-4, affine: bool = True
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features={num_features} must be >= 1.")
        if not norm_dims or min(norm_dims) < 1:
            raise ValueError(f"norm_dims={list(norm_dims)} must be non-empty axes >= 1 (axis 0 is the batch).")
        if eps <= 0:
            raise ValueError(f"norm_eps={eps} must be > 0.")
        self.num_features, self.norm_dims, self.eps = num_features, tuple(norm_dims), eps
        self.gamma = nn.Parameter(torch.ones(num_features)) if affine else None
        self.beta = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x * torch.rsqrt(x.pow(2).mean(dim=self.norm_dims, keepdim=True) + self.eps)
        if self.gamma is None:
            return normed
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        return normed * self.gamma.view(shape) + self.beta.view(shape)


class ConvBlock(nn.Module):
    """SiLU(RMSNorm(conv(x))); the convolution keeps the grid size and has no bias (beta replaces it)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        depthwise: bool,
        norm: dict,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.conv = make_conv(in_channels, out_channels, kernel_size, depthwise, bias=False)
        self.norm = RMSNorm(out_channels, **norm)
        self.activation = nn.SiLU() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


class ResBlock(nn.Module):
    """x + main_block(x), main_block = Conv-Norm-SiLU then Conv-Norm (no activation after the sum's
    branch, so a zero final gamma makes the block exactly the identity)."""

    def __init__(self, channels: int, kernel_size: int, depthwise: bool, norm: dict) -> None:
        super().__init__()
        self.main_block = nn.Sequential(
            ConvBlock(channels, channels, kernel_size, depthwise, norm),
            ConvBlock(channels, channels, kernel_size, depthwise, norm, activation=False),
        )

    @property
    def final_norm(self) -> RMSNorm:
        return self.main_block[-1].norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main_block(x)


class ResNetEncoder(nn.Module):
    """Frames (N, C, H, W) -> feature maps (N, channels[-1], H, W); see the module docstring."""

    def __init__(
        self,
        in_channels: int,
        channels: list[int],
        blocks_per_stage: int,
        kernel_size: int,
        depthwise: bool,
        use_weight_norm: bool,
        norm: dict,
        kaiming_silu_init: bool,
        zero_init_residual: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBlock(in_channels, channels[0], kernel_size, depthwise, norm)]
        for index, width in enumerate(channels):
            if index and width != channels[index - 1]:
                layers.append(ConvBlock(channels[index - 1], width, kernel_size, depthwise, norm))
            layers.extend(ResBlock(width, kernel_size, depthwise, norm) for _ in range(blocks_per_stage))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and kaiming_silu_init:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=LEAKY_SLOPE)
            if isinstance(module, ResBlock) and zero_init_residual and module.final_norm.gamma is not None:
                nn.init.zeros_(module.final_norm.gamma)
        if use_weight_norm:
            # After the init, so that g starts as the initialised weight's norm and v as its direction.
            for module in self.modules():
                if isinstance(module, ConvBlock):
                    module.conv = nn.utils.parametrizations.weight_norm(module.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_model("resnet_convgru")
class ResNetConvGRU(SequenceModel):
    """ResNet encoder per frame, ConvGRU over the feature maps, head to the next field or a vector.

    Args:
        input_shape, output_dim: as ConvGRUModel (the head follows output_dim the same way).
        channels: encoder widths per stage, e.g. [64, 128, 256].
        blocks_per_stage: ResBlocks per stage.
        conv_params: {type: standard | depthwise, kernel_size: odd k} of the encoder convolutions.
        norm_dims, norm_eps, norm_affine: the encoder's RMSNorm (see RMSNorm).
        kaiming_silu_init, zero_init_residual, use_weight_norm: see the module docstring.
        hidden_channels, num_layers, kernel_size, use_layer_norm, learnable_h0, use_depthwise: the
            ConvGRU stack's, as in ConvGRUModel.
    """

    supported_tasks = ("regression",)
    supported_inputs = ("fields",)

    def __init__(
        self,
        input_shape: tuple[int, int, int] | list[int],
        output_dim: int,
        channels: list[int] | tuple[int, ...] = (64, 128, 256),
        blocks_per_stage: int = 1,
        conv_params: dict | None = None,
        norm_dims: list[int] | tuple[int, ...] = (1,),
        norm_eps: float = 1e-4,
        norm_affine: bool = True,
        kaiming_silu_init: bool = True,
        zero_init_residual: bool = True,
        use_weight_norm: bool = False,
        hidden_channels: int = 64,
        num_layers: int = 1,
        kernel_size: int = 3,
        use_layer_norm: bool = True,
        learnable_h0: bool = True,
        use_depthwise: bool = False,
    ) -> None:
        super().__init__()
        input_shape = tuple(int(size) for size in input_shape)
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"input_shape={list(input_shape)} must be (channels, height, width) with positive sizes.")
        channels = [int(width) for width in channels]
        if not channels or min(channels) < 1:
            raise ValueError(f"channels={channels} must be a non-empty list of positive widths, e.g. [64, 128, 256].")
        conv_params = {"type": "standard", "kernel_size": 3, **(conv_params or {})}
        unknown = sorted(set(conv_params) - set(CONV_PARAM_KEYS))
        if unknown:
            raise ValueError(
                f"conv_params has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CONV_PARAM_KEYS)}."
            )
        if conv_params["type"] not in CONV_TYPES:
            raise ValueError(
                f"conv_params.type={conv_params['type']!r} is not allowed; choose one of: {', '.join(CONV_TYPES)}."
            )
        for name, value in (("conv_params.kernel_size", conv_params["kernel_size"]), ("kernel_size", kernel_size)):
            if value < 1 or value % 2 == 0:
                raise ValueError(f"{name}={value} must be an odd positive integer, so padding keeps the grid size.")
        depthwise = conv_params["type"] == "depthwise"
        if use_weight_norm and depthwise:
            raise ValueError(
                "use_weight_norm=True works with conv_params.type=standard only (a depthwise-separable "
                "convolution has no single weight to normalise); set one of them differently."
            )
        for name, value in (
            ("blocks_per_stage", blocks_per_stage),
            ("hidden_channels", hidden_channels),
            ("num_layers", num_layers),
            ("output_dim", output_dim),
        ):
            if value < (0 if name == "blocks_per_stage" else 1):
                raise ValueError(f"{name}={value} must be >= {0 if name == 'blocks_per_stage' else 1}.")
        self.input_shape = input_shape
        field_channels, height, width = input_shape
        norm = {"norm_dims": tuple(norm_dims), "eps": norm_eps, "affine": norm_affine}
        self.encoder = ResNetEncoder(
            field_channels,
            channels,
            blocks_per_stage,
            conv_params["kernel_size"],
            depthwise,
            use_weight_norm,
            norm,
            kaiming_silu_init,
            zero_init_residual,
        )
        self.layers = stack_cells(
            channels[-1],
            hidden_channels,
            num_layers,
            (height, width),
            kernel_size,
            use_layer_norm,
            learnable_h0,
            use_depthwise,
        )
        self.head = prediction_head(hidden_channels, input_shape, output_dim)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, C, H, W) -> per-step predictions (B, T, C, H, W) or (B, T, output_dim); the
        diagnostics are the ConvGRU's (update and reset gates averaged over channels and positions)."""
        if x.dim() != 5 or tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; resnet_convgru reads (batch, steps, *input_shape) = "
                f"(B, T, {', '.join(map(str, self.input_shape))})."
            )
        batch, steps = x.shape[:2]
        features = self.encoder(x.flatten(0, 1)).unflatten(0, (batch, steps))
        output, diagnostics = run_stack(self.layers, self.head, features)
        return (output, diagnostics) if return_diagnostics else output
