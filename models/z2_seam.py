"""Z2 seam-gated RNN (`z2_seam`, and `z2_equiv` = the same cell with no gate).

The hidden state splits into even and odd channels; the group element -1 acts as x -> -x,
h_even -> h_even, h_odd -> -h_odd. Every map respects that action, so the model is exactly
equivariant: model(-x) = -model(x), with gates and parity energy unchanged. A seam gate g_t flips
the chart of the odd state, (1 - 2 g_t) h_odd, which is how the model can follow a regime switch
in which the sign convention of the dynamics flips. Equations: docs/models.md.
"""

from __future__ import annotations

import torch
from torch import nn

from models.contract import SequenceModel
from models.parity import K_STAR, parity_energy, split_hidden_dim
from models.registry import register_model

GATE_TYPES = ("kstar", "learned", "fixed", "none")
NUM_INVARIANTS = 4  # x.y, ||x||^2, ||y||^2, alpha_minus


@register_model("z2_seam")
class Z2SeamRNN(SequenceModel):
    """Seam-gated Z2-equivariant RNN that predicts x_{t+1} at every step.

    Args:
        input_dim: observation size; the readout predicts the next observation, so output_dim
            must equal it.
        output_dim: size of the prediction (= input_dim).
        hidden_dim: total state size, split equally into even and odd channels.
        gate: `kstar` (fires when parity energy crosses K_STAR), `learned` (a function of the
            invariant features), `fixed` (0.5) or `none` (0: the plain equivariant RNN).
        temperature: sharpness of the `kstar` and `learned` gates.
    """

    supported_tasks = ("regression",)

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dim: int = 64,
        gate: str = "learned",
        temperature: float = 0.05,
    ) -> None:
        super().__init__()
        if gate not in GATE_TYPES:
            raise ValueError(f"gate={gate!r} is not a gate type; choose one of: {', '.join(GATE_TYPES)}.")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0.")
        if input_dim < 1:
            raise ValueError(f"input_dim={input_dim} must be >= 1.")
        if output_dim != input_dim:
            raise ValueError(
                f"output_dim={output_dim} must equal input_dim={input_dim}: the seam model's odd readout "
                "predicts the next observation."
            )
        even_dim, odd_dim = split_hidden_dim(hidden_dim, "z2_seam")
        self.gate_type = gate
        self.temperature = temperature
        # Block-diagonal recurrence: odd <- odd and even <- even only, so parity is never mixed.
        self.odd_recurrent = nn.Linear(odd_dim, odd_dim, bias=False)
        self.odd_input = nn.Linear(input_dim, odd_dim, bias=False)
        self.even_recurrent = nn.Linear(even_dim, even_dim, bias=True)
        self.even_input = nn.Linear(NUM_INVARIANTS, even_dim, bias=False)
        self.readout = nn.Linear(odd_dim, input_dim, bias=False)
        self.gate_score = nn.Linear(NUM_INVARIANTS, 1) if gate == "learned" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.odd_recurrent.weight)
        nn.init.orthogonal_(self.even_recurrent.weight)
        nn.init.zeros_(self.even_recurrent.bias)
        nn.init.xavier_uniform_(self.odd_input.weight)
        nn.init.xavier_uniform_(self.even_input.weight)
        nn.init.xavier_uniform_(self.readout.weight)
        if self.gate_score is not None:
            # Start nearly closed (g ~ 0.05): an open gate (0.5) would erase the odd state every step.
            nn.init.normal_(self.gate_score.weight, std=0.01)
            nn.init.constant_(self.gate_score.bias, -3.0 * self.temperature)

    def _gate(self, invariants: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        if self.gate_type == "kstar":
            return torch.sigmoid((alpha - K_STAR) / self.temperature)
        if self.gate_type == "learned":
            return torch.sigmoid(self.gate_score(invariants).squeeze(-1) / self.temperature)
        return alpha.new_full(alpha.shape, 0.5 if self.gate_type == "fixed" else 0.0)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, input_dim) -> predictions of x_{t+1}, (B, T, input_dim).

        With `return_diagnostics`, also {"gate": (B, T), "parity_energy": (B, T)}, the parity
        energy being that of the state after step t.
        """
        batch, steps, _ = x.shape
        h_odd = x.new_zeros(batch, self.odd_recurrent.in_features)
        h_even = x.new_zeros(batch, self.even_recurrent.in_features)
        odd_drive = self.odd_input(x)  # one matmul for all steps instead of T small ones
        prediction = self.readout(h_odd)  # y_t: the model's own odd prediction of x_t
        predictions, gates, energies = [], [], []
        alpha = parity_energy(h_even, h_odd)
        for t in range(steps):
            x_t = x[:, t]
            invariants = torch.stack(
                [(x_t * prediction).sum(-1), x_t.pow(2).sum(-1), prediction.pow(2).sum(-1), alpha], dim=-1
            )
            gate = self._gate(invariants, alpha)
            flipped_odd = (1.0 - 2.0 * gate).unsqueeze(-1) * h_odd
            h_odd = torch.tanh(self.odd_recurrent(flipped_odd) + odd_drive[:, t])
            h_even = torch.tanh(self.even_recurrent(h_even) + self.even_input(invariants))
            alpha = parity_energy(h_even, h_odd)
            prediction = self.readout(h_odd)
            predictions.append(prediction)
            gates.append(gate)
            energies.append(alpha)
        output = torch.stack(predictions, dim=1)
        if not return_diagnostics:
            return output
        return output, {"gate": torch.stack(gates, dim=1), "parity_energy": torch.stack(energies, dim=1)}


@register_model("z2_equiv")
class Z2EquivariantRNN(Z2SeamRNN):
    """The seam model with the gate removed (g = 0): the equivariant baseline without chart flips."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int = 64) -> None:
        super().__init__(input_dim, output_dim, hidden_dim=hidden_dim, gate="none")
