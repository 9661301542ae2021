"""ConvGRU (`convgru`): a stack of convolutional GRU layers for sequences of 2-D fields (B, T, C, H, W).

Per layer, with * a convolution that keeps the grid size and ⊙ the elementwise product:
    z_t  = sigmoid(N_z(W_z * x_t + U_z * h_{t-1} + b_z))             update gate
    r_t  = sigmoid(N_r(W_r * x_t + U_r * h_{t-1} + b_r))             reset gate
    h~_t = tanh(N_h(W_h * x_t + U_h * (r_t ⊙ h_{t-1}) + b_h))        candidate: r acts on h before U_h
    h_t  = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h~_t
The classic bug is h~_t = tanh(W_h * x_t + r_t ⊙ (U_h * h_{t-1})) or no r at all; here the reset
gate multiplies the state that the recurrent convolution reads. N_* are GroupNorms over the
pre-activations when `use_layer_norm` (then the biases b are GroupNorm's shift), identity otherwise.

Options: depthwise-separable convolutions (a k x k filter per channel, then a 1 x 1 channel mix),
grouped recurrent convolutions (the state splits into `num_groups` blocks that U maps block to
block; the input convolutions W stay dense so the blocks exchange information at every layer), a
learnable initial state, a residual around each layer (output h_t + x_t), and a clamp of the state
during training. Input convolutions get Kaiming init; recurrent ones are orthogonal per gate block.
"""

from __future__ import annotations

import torch
from torch import nn

from models.contract import SequenceModel
from models.registry import register_model

MAX_NORM_GROUPS = 32


def norm_groups(channels: int) -> int:
    """The GroupNorm group count for `channels`: the largest divisor of it not above min(32, channels)."""
    return max(g for g in range(1, min(MAX_NORM_GROUPS, channels) + 1) if channels % g == 0)


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution: a k x k filter per input channel, then a 1 x 1 mix of channels
    (grouped by `groups`). Parameters: in * k^2 + in * out / groups, against in * out * k^2 / groups."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def make_conv(
    in_channels: int, out_channels: int, kernel_size: int, depthwise: bool, groups: int = 1, bias: bool = True
) -> nn.Module:
    """A grid-size-preserving convolution, standard or depthwise-separable."""
    if depthwise:
        return SeparableConv2d(in_channels, out_channels, kernel_size, groups, bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias)


def channel_mixing_weight(conv: nn.Module) -> torch.Tensor:
    """The weight that mixes channels: the conv's own, or the pointwise stage of a separable one."""
    return conv.pointwise.weight if isinstance(conv, SeparableConv2d) else conv.weight


class ConvGRUCell(nn.Module):
    """One ConvGRU layer run over a whole sequence.

    Channel layout of every gate tensor: channel c of z, r, h~ and h belongs to state group
    c // (hidden / num_groups). Convolutions producing several gates at once order their output
    channels as (group, gate, channel within group), so that with grouped recurrent convolutions
    the z, r and h~ channels of a group read exactly that group's state.

    Args:
        in_channels, hidden_channels: channels of the layer input and of the state.
        grid: (H, W) of the fields, for the learnable initial state.
        kernel_size: odd size of every k x k filter.
        use_layer_norm, learnable_h0, use_depthwise, use_residual, grad_clip_val: see ConvGRUModel.
        recurrent_groups: groups of the recurrent convolutions (1 = dense).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        grid: tuple[int, int],
        kernel_size: int,
        use_layer_norm: bool,
        learnable_h0: bool,
        use_depthwise: bool,
        recurrent_groups: int,
        use_residual: bool,
        grad_clip_val: float | None,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.recurrent_groups = recurrent_groups
        self.use_residual = use_residual
        self.grad_clip_val = grad_clip_val
        # A bias in front of a GroupNorm is removed by the normalisation; GroupNorm's shift replaces it.
        self.input_conv = make_conv(
            in_channels, 3 * hidden_channels, kernel_size, use_depthwise, bias=not use_layer_norm
        )
        self.gate_conv = make_conv(
            hidden_channels, 2 * hidden_channels, kernel_size, use_depthwise, groups=recurrent_groups, bias=False
        )
        self.candidate_conv = make_conv(
            hidden_channels, hidden_channels, kernel_size, use_depthwise, groups=recurrent_groups, bias=False
        )
        make_norm = (
            (lambda: nn.GroupNorm(norm_groups(hidden_channels), hidden_channels)) if use_layer_norm else nn.Identity
        )
        self.update_norm, self.reset_norm, self.candidate_norm = make_norm(), make_norm(), make_norm()
        self.h0 = nn.Parameter(torch.zeros(hidden_channels, *grid)) if learnable_h0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.input_conv.modules():
            if isinstance(module, nn.Conv2d):
                # Unit gain: sigmoid and tanh are linear around 0, so pre-activations keep the input's scale.
                nn.init.kaiming_uniform_(module.weight, nonlinearity="linear")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for conv in (self.gate_conv, self.candidate_conv):
            if isinstance(conv, SeparableConv2d):
                # The spatial stage starts as the identity, so the recurrent map starts orthogonal.
                nn.init.dirac_(conv.depthwise.weight, groups=self.hidden_channels)
            weight = channel_mixing_weight(conv)
            with torch.no_grad():
                # Output rows come in contiguous (group, gate) blocks: each block is one gate's map
                # from its group's state, made orthogonal on its own.
                for block in weight.split(self.hidden_channels // self.recurrent_groups):
                    nn.init.orthogonal_(block)

    def split_gates(self, values: torch.Tensor, gates: int) -> tuple[torch.Tensor, ...]:
        """(N, (group, gate, channel), H, W) -> `gates` tensors of (N, hidden, H, W)."""
        n, _, height, width = values.shape
        grouped = values.view(n, self.recurrent_groups, gates, -1, height, width)
        return tuple(part.reshape(n, self.hidden_channels, height, width) for part in grouped.unbind(2))

    def initial_state(self, batch: int, reference: torch.Tensor) -> torch.Tensor:
        height, width = reference.shape[-2:]
        if self.h0 is None:
            return reference.new_zeros(batch, self.hidden_channels, height, width)
        return self.h0.to(reference.dtype).expand(batch, -1, -1, -1)

    def step(self, drive: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One time step from the input drive W * x_t + b (N, 3 hidden, H, W) and the state h_{t-1}:
        returns (h_t, z_t, r_t)."""
        drive_update, drive_reset, drive_candidate = self.split_gates(drive, 3)
        recurrent_update, recurrent_reset = self.split_gates(self.gate_conv(h), 2)
        update = torch.sigmoid(self.update_norm(drive_update + recurrent_update))
        reset = torch.sigmoid(self.reset_norm(drive_reset + recurrent_reset))
        candidate = torch.tanh(self.candidate_norm(drive_candidate + self.candidate_conv(reset * h)))
        h = (1 - update) * h + update * candidate
        if self.training and self.grad_clip_val is not None:
            # Bounds the state, and with it the gradient through the recurrence (zero past the bound).
            h = h.clamp(-self.grad_clip_val, self.grad_clip_val)
        return h, update, reset

    def forward(
        self, x: torch.Tensor, h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, C_in, H, W), h: initial state (default: h0) -> layer outputs (B, T, hidden, H, W)
        (h_t, plus x_t with the residual) and the update and reset gates of every position, (B, T, hidden, H, W)."""
        batch, steps = x.shape[:2]
        # The input convolution of all steps at once: the loop below only runs the recurrent ones.
        drives = self.input_conv(x.flatten(0, 1)).unflatten(0, (batch, steps))
        h = self.initial_state(batch, x) if h is None else h
        states, updates, resets = [], [], []
        for drive in drives.unbind(1):
            h, update, reset = self.step(drive, h)
            states.append(h)
            updates.append(update)
            resets.append(reset)
        outputs = torch.stack(states, dim=1)
        if self.use_residual:
            outputs = outputs + x
        return outputs, torch.stack(updates, dim=1), torch.stack(resets, dim=1)


@register_model("convgru")
class ConvGRUModel(SequenceModel):
    """A ConvGRU stack with a head that predicts, at every step, the next field or a vector.

    The head follows the DataModule's `output_dim`: when it equals C * H * W (data.target=field) a
    1 x 1 convolution reads the top state at each position and predicts the next field, (B, T, C, H, W);
    any other value (data.target=observation) is a linear map of the whole top state to a vector,
    (B, T, output_dim).

    Args:
        input_shape: (C, H, W) of each step's field.
        output_dim: C * H * W for a field prediction, else the size of the predicted vector.
        hidden_channels: state channels of every layer.
        num_layers: stacked ConvGRU layers; layer l + 1 reads the outputs of layer l.
        kernel_size: odd size of every k x k filter (padding keeps H x W).
        use_layer_norm: GroupNorm over the update, reset and candidate pre-activations, with the
            largest divisor of hidden_channels not above min(32, hidden_channels) as group count.
        learnable_h0: a learned initial state per layer, channel and position (else zeros).
        use_depthwise: depthwise-separable convolutions everywhere in the recurrence.
        use_grouped: grouped recurrent convolutions with `num_groups` groups (divides their
            parameters by num_groups); the input convolutions stay dense.
        num_groups: groups of the recurrent convolutions when use_grouped; must divide hidden_channels.
        use_residual: each layer outputs h_t + x_t; needs input channels = hidden_channels.
        grad_clip_val: in training, clamp every state to [-grad_clip_val, grad_clip_val] (null: off).
    """

    supported_tasks = ("regression",)
    supported_inputs = ("fields",)

    def __init__(
        self,
        input_shape: tuple[int, int, int] | list[int],
        output_dim: int,
        hidden_channels: int = 16,
        num_layers: int = 1,
        kernel_size: int = 3,
        use_layer_norm: bool = False,
        learnable_h0: bool = False,
        use_depthwise: bool = False,
        use_grouped: bool = False,
        num_groups: int = 4,
        use_residual: bool = False,
        grad_clip_val: float | None = None,
    ) -> None:
        super().__init__()
        input_shape = tuple(int(size) for size in input_shape)
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"input_shape={list(input_shape)} must be (channels, height, width) with positive sizes.")
        for name, value in (
            ("output_dim", output_dim),
            ("hidden_channels", hidden_channels),
            ("num_layers", num_layers),
            ("num_groups", num_groups),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size={kernel_size} must be an odd positive integer, so padding keeps the grid size."
            )
        if use_grouped and num_groups == 1:
            raise ValueError(
                "num_groups=1 with use_grouped=True is a dense convolution; set num_groups >= 2 or use_grouped=false."
            )
        if use_grouped and hidden_channels % num_groups:
            raise ValueError(
                f"num_groups={num_groups} must divide hidden_channels={hidden_channels} "
                "for grouped recurrent convolutions."
            )
        channels, height, width = input_shape
        if use_residual and channels != hidden_channels:
            raise ValueError(
                f"use_residual=True adds each layer's input to its output, which needs input channels equal to "
                f"hidden channels, but the field has {channels} channels and hidden_channels={hidden_channels}; "
                f"set hidden_channels={channels}, data.channels={hidden_channels} or use_residual=false."
            )
        if grad_clip_val is not None and grad_clip_val <= 0:
            raise ValueError(f"grad_clip_val={grad_clip_val} must be > 0, or null to leave the state unclamped.")
        self.input_shape = input_shape
        self.predicts_field = output_dim == channels * height * width
        self.layers = stack_cells(
            channels,
            hidden_channels,
            num_layers,
            (height, width),
            kernel_size,
            use_layer_norm,
            learnable_h0,
            use_depthwise,
            recurrent_groups=num_groups if use_grouped else 1,
            use_residual=use_residual,
            grad_clip_val=grad_clip_val,
        )
        self.head = prediction_head(hidden_channels, input_shape, output_dim)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, C, H, W) -> per-step predictions of the next field (B, T, C, H, W) or vector
        (B, T, output_dim).

        With `return_diagnostics`, also {"gate": the update gate averaged over channels, positions
        and layers, "reset_gate": the same for the reset gate}, each (B, T), and per layer
        `update_gate_layer<l>` when there are several.
        """
        if x.dim() != 5 or tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; convgru reads (batch, steps, *input_shape) = "
                f"(B, T, {', '.join(map(str, self.input_shape))})."
            )
        output, diagnostics = run_stack(self.layers, self.head, x)
        return (output, diagnostics) if return_diagnostics else output


def stack_cells(
    in_channels: int,
    hidden_channels: int,
    num_layers: int,
    grid: tuple[int, int],
    kernel_size: int,
    use_layer_norm: bool,
    learnable_h0: bool,
    use_depthwise: bool,
    recurrent_groups: int = 1,
    use_residual: bool = False,
    grad_clip_val: float | None = None,
) -> nn.ModuleList:
    """`num_layers` ConvGRU cells of one configuration, the first reading `in_channels`."""
    return nn.ModuleList(
        ConvGRUCell(
            in_channels if layer == 0 else hidden_channels,
            hidden_channels,
            grid,
            kernel_size,
            use_layer_norm,
            learnable_h0,
            use_depthwise,
            recurrent_groups,
            use_residual,
            grad_clip_val,
        )
        for layer in range(num_layers)
    )


def prediction_head(hidden_channels: int, field_shape: tuple[int, int, int], output_dim: int) -> nn.Module:
    """The per-step readout of the top state: a 1 x 1 convolution to the next field when output_dim
    is the field's size C * H * W, else a linear map of the whole state to an output_dim vector."""
    channels, height, width = field_shape
    if output_dim == channels * height * width:
        return nn.Conv2d(hidden_channels, channels, 1)
    return nn.Sequential(nn.Flatten(), nn.Linear(hidden_channels * height * width, output_dim))


def run_stack(layers: nn.ModuleList, head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ConvGRU layers over x (B, T, C, H, W), then `head` at every step: (predictions, diagnostics),
    the diagnostics as ConvGRUModel.forward describes them."""
    updates, resets = [], []
    for layer in layers:
        x, update, reset = layer(x)
        updates.append(update.mean(dim=(2, 3, 4)))
        resets.append(reset.mean(dim=(2, 3, 4)))
    batch, steps = x.shape[:2]
    output = head(x.flatten(0, 1)).unflatten(0, (batch, steps))
    diagnostics = {"gate": torch.stack(updates).mean(0), "reset_gate": torch.stack(resets).mean(0)}
    if len(layers) > 1:
        diagnostics.update({f"update_gate_layer{index}": gate for index, gate in enumerate(updates, start=1)})
    return output, diagnostics
