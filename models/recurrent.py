"""Recurrent baselines `lstm`, `gru` and `rnn`: strong, fast and with the options researchers expect.

Every result is compared against these, so they get the initialisation that makes them strong:
Xavier input weights, orthogonal recurrent weights per gate, and a forget-gate bias of 1 for the
LSTM. The weights live in a `torch.nn` LSTM/GRU/RNN module, so whenever no cell-only feature is on
the fused kernel (cuDNN on CUDA) runs; LayerNorm (Ba et al., 2016) needs the per-step cell path,
which runs the same weights through the equations below, in torch's gate order.

    LSTM (i, f, g, o):  c' = f * c + i * g,   h' = o * tanh(c')         [LayerNorm: tanh(LN(c'))]
    GRU  (r, z, n):     n = tanh(Wn x + r * (Un h)),   h' = (1 - z) * n + z * h
    RNN:                h' = tanh(W x + U h)
With LayerNorm the input and recurrent projections are normalised separately, before their biases.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from models.contract import SequenceModel
from models.inputs import check_input_sizes
from models.registry import register_model


class RecurrentCell(nn.Module):
    """One direction of one layer on the cell path: the step equations of a `torch.nn` family,
    reading the weights from that module, with the optional LayerNorms."""

    def __init__(self, family: str, hidden_dim: int, use_layer_norm: bool) -> None:
        super().__init__()
        self.family = family
        gates = GATES_PER_FAMILY[family] * hidden_dim
        self.input_norm = nn.LayerNorm(gates) if use_layer_norm else nn.Identity()
        self.recurrent_norm = nn.LayerNorm(gates) if use_layer_norm else nn.Identity()
        self.cell_norm = nn.LayerNorm(hidden_dim) if use_layer_norm and family == "lstm" else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        weights: tuple[torch.Tensor | float, ...],
        initial: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
        on_gates: Callable[[tuple[torch.Tensor, ...]], None] | None = None,
    ) -> torch.Tensor:
        """x: (B, T, input) -> hidden states (B, T, hidden), running forward in time.

        `initial` holds the starting h (and c for the LSTM), zeros where None. `on_gates`, when
        given, receives every step's gate pre-activations in GATES[family] order (the audit reads
        them there, so the equations exist once).
        """
        weight_ih, weight_hh, bias_ih, bias_hh = weights
        # All input projections at once: the per-step loop only multiplies by the recurrent weights.
        projected_inputs = self.input_norm(x @ weight_ih.T) + bias_ih
        batch, hidden = x.shape[0], weight_hh.shape[1]
        h = initial[0] if initial[0] is not None else x.new_zeros(batch, hidden)
        c = initial[1] if initial[1] is not None else x.new_zeros(batch, hidden)
        outputs = []
        for projected in projected_inputs.unbind(1):
            recurrent = self.recurrent_norm(h @ weight_hh.T) + bias_hh
            gates = self.gate_preactivations(projected, recurrent)
            if on_gates is not None:
                on_gates(gates)
            if self.family == "lstm":
                i, f, g, o = gates
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(self.cell_norm(c))
            elif self.family == "gru":
                _, z, n = gates
                z = torch.sigmoid(z)
                h = (1 - z) * torch.tanh(n) + z * h
            else:
                h = torch.tanh(gates[0])
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def gate_preactivations(self, projected: torch.Tensor, recurrent: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step's gate pre-activations, in GATES[family] order, from the input and recurrent parts."""
        if self.family == "lstm":
            return tuple((projected + recurrent).chunk(4, dim=-1))
        if self.family == "gru":
            input_r, input_z, input_n = projected.chunk(3, dim=-1)
            recurrent_r, recurrent_z, recurrent_n = recurrent.chunk(3, dim=-1)
            reset = input_r + recurrent_r
            return reset, input_z + recurrent_z, input_n + torch.sigmoid(reset) * recurrent_n
        return (projected + recurrent,)


# Each family's gates in torch's order, with the nonlinearity applied to each pre-activation.
GATES = {
    "lstm": (
        ("input gate", "sigmoid"),
        ("forget gate", "sigmoid"),
        ("cell candidate", "tanh"),
        ("output gate", "sigmoid"),
    ),
    "gru": (("reset gate", "sigmoid"), ("update gate", "sigmoid"), ("candidate", "tanh")),
    "rnn": (("state", "tanh"),),
}
GATES_PER_FAMILY = {family: len(gates) for family, gates in GATES.items()}
TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentModel(SequenceModel):
    """A multi-layer (optionally bidirectional) LSTM/GRU/RNN with an embedding for token inputs and
    a linear readout at every step.

    Args:
        output_dim: size of each step's output (the vocabulary size for language modelling).
        input_dim: size of vector inputs; or
        vocab_size: number of token ids, which an embedding of `embedding_dim` turns into vectors.
        hidden_dim, num_layers: per direction and layer.
        dropout: between layers (torch's convention; needs num_layers > 1).
        bidirectional: also read the sequence backwards. Each step's output then depends on later
            steps, so it is refused for causal next-step prediction.
        use_layer_norm: LayerNorm on the gate pre-activations (and the LSTM cell); runs the cell path.
        embedding_dim: embedding size for token inputs (null: hidden_dim).
    """

    supported_tasks = ("regression", "classification")
    supported_inputs = ("vectors", "tokens")
    family: str

    def __init__(
        self,
        output_dim: int,
        input_dim: int | None = None,
        vocab_size: int | None = None,
        hidden_dim: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        use_layer_norm: bool = False,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_input_sizes(input_dim, vocab_size)
        sizes = {
            "output_dim": output_dim,
            "hidden_dim": hidden_dim,
            "num_layers": num_layers,
            "embedding_dim": embedding_dim,
        }
        for name, value in sizes.items():
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must lie in [0, 1).")
        if embedding_dim is not None and vocab_size is None:
            raise ValueError(
                f"embedding_dim={embedding_dim} applies to token inputs only; leave it null for vector data."
            )
        self.bidirectional = bidirectional
        self.use_layer_norm = use_layer_norm
        self.embedding = nn.Embedding(vocab_size, embedding_dim or hidden_dim) if vocab_size is not None else None
        recurrent_input = input_dim if vocab_size is None else embedding_dim or hidden_dim
        # torch applies dropout between layers only; with one layer it would be a silent no-op.
        self.recurrent = TORCH_CLASSES[self.family](
            recurrent_input,
            hidden_dim,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        directions = 2 if bidirectional else 1
        # Without LayerNorm the cells hold no parameters; they are the reference the fused path must match.
        self.cells = nn.ModuleList(
            RecurrentCell(self.family, hidden_dim, use_layer_norm) for _ in range(num_layers * directions)
        )
        self.head = nn.Linear(hidden_dim * directions, output_dim)
        self.reset_parameters()

    @property
    def sees_future_steps(self) -> bool:
        return self.bidirectional

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
        if self.family == "lstm":
            # Jozefowicz et al. (2015): remember by default. torch adds bias_ih and bias_hh, so
            # setting one of them makes the effective forget bias exactly 1.
            for name, bias in self.recurrent.named_parameters():
                if name.startswith("bias_ih"):
                    bias.data[hidden : 2 * hidden].fill_(1.0)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False, use_cell_path: bool | None = None):
        """x: (B, T, input_dim) floats or (B, T) token ids -> per-step outputs (B, T, output_dim).

        `use_cell_path` forces the path (default: the cell path exactly when LayerNorm is on); both
        paths compute the same function of the same weights. No gates; the diagnostic `state` is the
        top layer's hidden state (B, T, hidden * directions), which the seam experiment's logistic probe
        reads (analysis.hypotheses.fit_logistic_probe).
        """
        if self.embedding is not None:
            x = self.embedding(x)
        if use_cell_path is None:
            use_cell_path = self.use_layer_norm
        features = self._cell_path(x) if use_cell_path else self.recurrent(x)[0]
        output = self.head(features)
        return (output, {"state": features}) if return_diagnostics else output

    def forward_with_state(self, x: torch.Tensor, state=None):
        """(outputs, final state) of one chunk started from `state` (None: zeros), on the fused path.

        For stateful training on one long trajectory: the final state of a chunk is the state to
        start the next chunk from (torch's h_n, or (h_n, c_n) for the LSTM).
        """
        if self.use_layer_norm or self.bidirectional:
            raise ValueError(
                f"stateful training of {self.family} needs the fused path, which use_layer_norm=true "
                "and bidirectional=true do not run; set both to false."
            )
        if self.embedding is not None:
            x = self.embedding(x)
        features, final_state = self.recurrent(x, state)
        return self.head(features), final_state

    def _cell_path(self, x: torch.Tensor) -> torch.Tensor:
        rnn = self.recurrent
        directions = 2 if rnn.bidirectional else 1
        for layer in range(rnn.num_layers):
            if layer > 0 and self.training and rnn.dropout > 0:
                x = nn.functional.dropout(x, rnn.dropout)
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = tuple(
                    getattr(rnn, f"{kind}{suffix}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                )
                cell = self.cells[layer * directions + direction]
                if direction:
                    outputs.append(cell(x.flip(1), weights).flip(1))
                else:
                    outputs.append(cell(x, weights))
            x = torch.cat(outputs, dim=-1)
        return x


@register_model("lstm")
class LSTMModel(RecurrentModel):
    """LSTM baseline."""

    family = "lstm"


@register_model("gru")
class GRUModel(RecurrentModel):
    """GRU baseline."""

    family = "gru"


@register_model("rnn")
class RNNModel(RecurrentModel):
    """Vanilla tanh RNN baseline."""

    family = "rnn"
