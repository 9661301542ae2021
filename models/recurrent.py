"""Recurrent baselines (`lstm`, `gru`): the fused torch.nn kernels with a linear head per step.

These are the baselines every seam-model result is compared against, so they get the
initialisation that makes them strong: Xavier input weights, orthogonal recurrent weights per
gate, and a forget-gate bias of 1 for the LSTM.
"""

from __future__ import annotations

import torch
from torch import nn

from models.registry import register_model


class FusedRecurrentModel(nn.Module):
    """A multi-layer fused `torch.nn` recurrent network with a linear readout at every step."""

    supported_tasks = ("regression",)
    recurrent_class: type[nn.RNNBase]
    gates_per_layer: int

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dim: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("output_dim", output_dim),
                            ("hidden_dim", hidden_dim), ("num_layers", num_layers)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must lie in [0, 1).")
        # torch applies dropout between layers only; with one layer it would be a silent no-op.
        self.recurrent = self.recurrent_class(
            input_dim, hidden_dim, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden_dim, output_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        hidden = self.recurrent.hidden_size
        for name, weight in self.recurrent.named_parameters():
            if name.startswith("weight_ih"):
                for block in weight.data.split(hidden):
                    nn.init.xavier_uniform_(block)
            elif name.startswith("weight_hh"):
                for block in weight.data.split(hidden):
                    nn.init.orthogonal_(block)
            else:
                nn.init.zeros_(weight)
        self._init_biases()

    def _init_biases(self) -> None:
        """Hook for families with a non-zero bias convention."""

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, input_dim) -> per-step predictions (B, T, output_dim); no gate diagnostics."""
        output = self.head(self.recurrent(x)[0])
        return (output, {}) if return_diagnostics else output


@register_model("lstm")
class LSTMModel(FusedRecurrentModel):
    """LSTM baseline; torch orders the gates (input, forget, cell, output)."""

    recurrent_class = nn.LSTM

    def _init_biases(self) -> None:
        hidden = self.recurrent.hidden_size
        for name, bias in self.recurrent.named_parameters():
            if name.startswith("bias_ih"):
                bias.data[hidden : 2 * hidden].fill_(1.0)


@register_model("gru")
class GRUModel(FusedRecurrentModel):
    """GRU baseline."""

    recurrent_class = nn.GRU
