"""Z2 seam-gated RNN (`z2_seam`, and `z2_equiv` = the same cell with no gate).

The hidden state splits into even and odd channels; the group element -1 acts as x -> -x,
h_even -> h_even, h_odd -> -h_odd. Every map respects that action, so the model is exactly
equivariant: model(-x) = -model(x), with gates and parity energy unchanged. A seam gate g_t flips
the chart of the odd state, (1 - 2 g_t) h_odd, which is how the model can follow a regime switch
in which the sign convention of the dynamics flips. Per step (equations and reasons: docs/models.md):

    e_t      = [x_t . y_t, ||x_t||^2, ||y_t||^2, alpha_minus(h_{t-1})]   (invariant features)
    g_t      = gate(e_t, h_even,{t-1})                                    (see `gate` below)
    h_odd,t  = tanh(W_oo (1 - 2 g_t) h_odd,{t-1} + U x_t)                 (no bias: odd)
    h_even,t = tanh(W_ee h_even,{t-1} + Q e_t + b)
    y_{t+1}  = V (h_odd,t * sigmoid(G h_even,t + c))                      (odd times invariant: odd)

y_t is the model's own prediction of x_t. The readout lets the even state scale each odd channel,
so the even half of the state reaches the output: every parameter counted in num_parameters is used.

On CPU, for float32/float64 inputs, the time loop runs in the fused kernel of
models/seam_cpu_kernel.py (forward and backward through time in C++); elsewhere, where the kernel
cannot be built, or with SEAM_SEAM_KERNEL=eager, it runs as the per-step torch loop `_run_eager`,
which defines what the kernel computes.
"""

from __future__ import annotations

import torch
from torch import nn

from models import seam_cpu_kernel
from models.contract import SequenceModel
from models.parity import K_STAR, parity_energy, split_hidden_dim
from models.registry import register_model

GATE_TYPES = ("kstar", "learned", "fixed", "none")
NUM_INVARIANTS = 4  # x.y, ||x||^2, ||y||^2, alpha_minus
DEFAULT_FIXED_GATE = 0.1  # 1 - 2g = 0.8: the odd state keeps a memory (g = 0.5 would erase it)
FIXED_GATE_MIN_MEMORY = 0.1  # smallest |1 - 2g| a fixed gate may leave the odd recurrence


@register_model("z2_seam")
class Z2SeamRNN(SequenceModel):
    """Seam-gated Z2-equivariant RNN that predicts x_{t+1} at every step.

    Args:
        input_dim: observation size; the readout predicts the next observation, so output_dim
            must equal it.
        output_dim: size of the prediction (= input_dim, its default).
        hidden_dim: total state size, split equally into even and odd channels.
        gate: `kstar` (fires when the parity energy of h_{t-1} crosses K_STAR), `learned`
            (sigmoid((w . e_t + u . h_even,{t-1} + b) / temperature): the even state is invariant,
            so reading it keeps the model equivariant and gives the gate a memory of the regime),
            `fixed` (the constant `fixed_gate`) or `none` (0: the plain equivariant RNN).
        temperature: sharpness of the `kstar` and `learned` gates.
        fixed_gate: the constant of the `fixed` gate, in [0, 1] with |1 - 2 fixed_gate| >= 0.1
            (at 0.5 the odd recurrence is multiplied by 0 and the model has no memory); default 0.1.
    """

    supported_tasks = ("regression",)

    def __init__(
        self,
        input_dim: int,
        output_dim: int | None = None,
        hidden_dim: int = 64,
        gate: str = "learned",
        temperature: float = 0.05,
        fixed_gate: float | None = None,
    ) -> None:
        super().__init__()
        if gate not in GATE_TYPES:
            raise ValueError(f"gate={gate!r} is not a gate type; choose one of: {', '.join(GATE_TYPES)}.")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0.")
        if fixed_gate is not None and gate != "fixed":
            raise ValueError(f"fixed_gate={fixed_gate} applies only to gate='fixed', not gate={gate!r}; remove it.")
        fixed_gate = DEFAULT_FIXED_GATE if fixed_gate is None else float(fixed_gate)
        if not 0.0 <= fixed_gate <= 1.0 or abs(1.0 - 2.0 * fixed_gate) < FIXED_GATE_MIN_MEMORY:
            raise ValueError(
                f"fixed_gate={fixed_gate} must lie in [0, 0.45] or [0.55, 1]: near 0.5 the factor 1 - 2 fixed_gate "
                "multiplies the odd state by about 0 and the model keeps no memory."
            )
        if input_dim < 1:
            raise ValueError(f"input_dim={input_dim} must be >= 1.")
        if output_dim is not None and output_dim != input_dim:
            raise ValueError(
                f"output_dim={output_dim} must equal input_dim={input_dim}: the seam model's odd readout "
                "predicts the next observation."
            )
        even_dim, odd_dim = split_hidden_dim(hidden_dim, "z2_seam")
        self.gate_type = gate
        self.temperature = temperature
        self.fixed_gate = fixed_gate
        # Block-diagonal recurrence: odd <- odd and even <- even only, so parity is never mixed.
        self.odd_recurrent = nn.Linear(odd_dim, odd_dim, bias=False)
        self.odd_input = nn.Linear(input_dim, odd_dim, bias=False)
        self.even_recurrent = nn.Linear(even_dim, even_dim, bias=True)
        self.even_input = nn.Linear(NUM_INVARIANTS, even_dim, bias=False)
        self.readout_modulation = nn.Linear(even_dim, odd_dim)  # G, c: invariant, so it may have a bias
        self.readout = nn.Linear(odd_dim, input_dim, bias=False)
        self.gate_score = nn.Linear(NUM_INVARIANTS + even_dim, 1) if gate == "learned" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.odd_recurrent.weight)
        nn.init.orthogonal_(self.even_recurrent.weight)
        nn.init.zeros_(self.even_recurrent.bias)
        nn.init.xavier_uniform_(self.odd_input.weight)
        nn.init.xavier_uniform_(self.even_input.weight)
        nn.init.xavier_uniform_(self.readout_modulation.weight)
        nn.init.zeros_(self.readout_modulation.bias)
        nn.init.xavier_uniform_(self.readout.weight)
        if self.gate_score is not None:
            # Start nearly closed (g ~ 0.05): an open gate (0.5) would erase the odd state every step.
            nn.init.normal_(self.gate_score.weight, std=0.01)
            nn.init.constant_(self.gate_score.bias, -3.0 * self.temperature)

    def _readout(self, h_even: torch.Tensor, h_odd: torch.Tensor) -> torch.Tensor:
        return self.readout(h_odd * torch.sigmoid(self.readout_modulation(h_even)))

    def _step_maps(self, x: torch.Tensor):
        """The maps of the per-step loop, arranged so that each step issues few small ops.

        The pre-activations that read (e_t, h_even,{t-1}) -- the learned gate's score (first column,
        only for gate='learned') and the even update -- are one affine map of
        [x.y, ||y||^2, alpha, h_even,{t-1}]; its ||x_t||^2 term and biases do not depend on the state,
        so they are computed for all steps at once (`static`, (B, T, columns)), like the odd drive
        U x_t. Only invariant inputs feed these columns and only odd ones the odd update, so the
        stacking mixes no parity. Returns (state weight, static part, odd drive).
        """
        even_dim = self.even_recurrent.in_features
        # Columns of the invariants in e_t = [x.y, ||x||^2, ||y||^2, alpha]: state-dependent ones and ||x||^2.
        dynamic, x_norm = [0, 2, 3], 1
        weights = [torch.cat([self.even_input.weight[:, dynamic], self.even_recurrent.weight], dim=1)]
        x_weights, biases = [self.even_input.weight[:, x_norm]], [self.even_recurrent.bias]
        if self.gate_type == "learned":
            score = self.gate_score.weight / self.temperature  # (1, 4 + even): sigmoid(score / T)
            weights.insert(0, torch.cat([score[:, dynamic], score[:, NUM_INVARIANTS : NUM_INVARIANTS + even_dim]], 1))
            x_weights.insert(0, score[:, x_norm])
            biases.insert(0, self.gate_score.bias / self.temperature)
        state_weight = torch.cat(weights).t()  # (3 + even, columns)
        static = x.pow(2).sum(-1, keepdim=True) * torch.cat(x_weights) + torch.cat(biases)
        return state_weight, static, self.odd_input(x)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, input_dim) -> predictions of x_{t+1}, (B, T, input_dim).

        With `return_diagnostics`, also {"gate": (B, T), "parity_energy": (B, T)}, the parity
        energy being that of the state after step t.
        """
        output, diagnostics, _ = self._run(x, None, return_diagnostics)
        return (output, diagnostics) if return_diagnostics else output

    def forward_with_state(self, x: torch.Tensor, state=None):
        """(predictions, final state (h_even, h_odd)) of one chunk started from `state` (None: zeros).

        For stateful training on one long trajectory: the model's own prediction y_t and the parity
        energy are functions of the state, so feeding the final state of a chunk to the next
        continues the sequence exactly.
        """
        output, _, final_state = self._run(x, state, False)
        return output, final_state

    @property
    def _constant_gate(self) -> float:
        """The gate of `fixed` and `none` (0: no flip); unused by the state-dependent gates."""
        return 0.0 if self.gate_type == "none" else self.fixed_gate

    def _run(self, x: torch.Tensor, state, return_diagnostics: bool):
        if state is None:
            h_even = x.new_zeros(x.shape[0], self.even_recurrent.in_features)
            h_odd = x.new_zeros(x.shape[0], self.odd_recurrent.in_features)
        else:
            h_even, h_odd = state
        # A torch function mode (the audit's gate recorder) must see the per-step ops, which the kernel hides.
        if not torch.overrides._is_torch_function_mode_enabled():
            fused = seam_cpu_kernel.kernel_for(x)
            if fused is not None:
                return self._run_fused(x, h_even, h_odd, return_diagnostics, fused)
        return self._run_eager(x, h_even, h_odd, return_diagnostics)

    def _run_fused(self, x, h_even, h_odd, return_diagnostics: bool, kernel):
        """The time loop in one call of the fused CPU kernel; its maps in full precision under autocast."""
        with torch.autocast(x.device.type, enabled=False):
            maps = self._step_maps(x)
        weights = (
            self.odd_recurrent.weight,
            self.readout_modulation.weight,
            self.readout_modulation.bias,
            self.readout.weight,
        )
        output, final_state, gates, energies = seam_cpu_kernel.seam_recurrence(
            kernel, x, maps, weights, (h_even, h_odd), self.gate_type, self.temperature, self._constant_gate
        )
        diagnostics = {"gate": gates, "parity_energy": energies} if return_diagnostics else None
        return output, diagnostics, final_state

    def _run_eager(self, x, h_even, h_odd, return_diagnostics: bool):
        """The time loop as per-step torch ops: any device and dtype, and the kernel's reference."""
        batch, steps, _ = x.shape
        state_weight, static, odd_drive = self._step_maps(x)
        odd_weight = self.odd_recurrent.weight.t()
        learned = self.gate_type == "learned"
        constant_gate = self._constant_gate
        prediction = self._readout(h_even, h_odd)  # y_t: the model's own odd prediction of x_t
        alpha = parity_energy(h_even, h_odd)
        predictions, gates, energies = [], [], []
        for t in range(steps):
            x_t = x[:, t]
            features = torch.cat(
                [
                    (x_t * prediction).sum(-1, keepdim=True),
                    prediction.pow(2).sum(-1, keepdim=True),
                    alpha.unsqueeze(-1),
                    h_even,
                ],
                dim=-1,
            )
            preactivation = torch.addmm(static[:, t], features, state_weight)
            even_preactivation, gate = preactivation, None
            if learned:
                gate, even_preactivation = torch.sigmoid(preactivation[:, 0]), preactivation[:, 1:]
            elif self.gate_type == "kstar":
                gate = torch.sigmoid((alpha - K_STAR) / self.temperature)
            if gate is not None:
                flipped_odd = (1.0 - 2.0 * gate).unsqueeze(-1) * h_odd
            else:  # a constant gate: the flip is a number (1 for `none`)
                flipped_odd = h_odd if constant_gate == 0.0 else (1.0 - 2.0 * constant_gate) * h_odd
            h_odd = torch.tanh(torch.addmm(odd_drive[:, t], flipped_odd, odd_weight))
            h_even = torch.tanh(even_preactivation)
            alpha = parity_energy(h_even, h_odd)
            prediction = self._readout(h_even, h_odd)
            predictions.append(prediction)
            if return_diagnostics:
                gates.append(gate)
                energies.append(alpha)
        output = torch.stack(predictions, dim=1)
        diagnostics = None
        if return_diagnostics:
            gate_values = (
                x.new_full((batch, steps), constant_gate)
                if self.gate_type in ("fixed", "none")
                else torch.stack(gates, dim=1)
            )
            diagnostics = {"gate": gate_values, "parity_energy": torch.stack(energies, dim=1)}
        return output, diagnostics, (h_even, h_odd)


@register_model("z2_equiv")
class Z2EquivariantRNN(Z2SeamRNN):
    """The seam model with the gate removed (g = 0): the equivariant baseline without chart flips.

    Its even state still reaches the output through the readout modulation, as in z2_seam."""

    def __init__(self, input_dim: int, output_dim: int | None = None, hidden_dim: int = 64) -> None:
        super().__init__(input_dim, output_dim, hidden_dim=hidden_dim, gate="none")
