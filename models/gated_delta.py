"""Z2 gated-delta RNN (`z2_delta`): a seam-gated delta rule whose gates read inputs only.

Because no gate reads the state, the whole sequence is one linear recurrence
h_t = a_t * h_{t-1} + b_t, computed by the parallel scan of models/scan.py instead of a per-step
loop (on CPU, gates and both recurrences in the fused kernels of models/delta_cpu_kernel.py).
Per block, with u the (odd) block input and e_t its invariant features:
    odd:  h_odd,t  = (1 - beta_t)(1 - 2 s_t) h_odd,{t-1} + beta_t (W u_t)
    even: h_even,t = (1 - beta_t) h_even,{t-1} + beta_t tanh(Q e_t + c)
s_t is the seam gate (a chart flip folded into the decay, so a_t may be negative) and beta_t the
update gate. Blocks stack as pre-norm residual blocks on an odd residual stream; RMSNorm without
bias and bias-free odd maps keep model(-x) = -model(x) exact. Equations: docs/models.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models import delta_cpu_kernel
from models.contract import SequenceModel
from models.delta_cpu_kernel import DeltaKernel
from models.inputs import check_input_sizes, input_layer
from models.parity import parity_energy, split_hidden_dim
from models.registry import register_model
from models.scan import linear_scan, linear_scan_reference

NUM_BASE_INVARIANTS = 3  # u_t . u_{t-1}, ||u_t||^2, ||u_{t-1}||^2


class LowRankLinear(nn.Module):
    """A bias-free (hence odd) linear map d_in -> d_out of rank `rank`."""

    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        """The (d_out, d_in) matrix of the map, as nn.Linear names it."""
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same map as up(down(x)) in one (d_out, d_in) matmul over the tokens: two thin matmuls
        # with an inner size of `rank`, and their four backward matmuls, cost more on CPU.
        return nn.functional.linear(x, self.weight)


def flipped_decay(seam: torch.Tensor, beta_odd: torch.Tensor) -> torch.Tensor:
    """Odd decay (1 - beta)(1 - 2 s): the delta rule's (1 - beta) with the chart flip folded in.

    Written as flip - flip * beta in one addcmul, so only one (B, T, d) tensor is written."""
    flip = (1.0 - 2.0 * seam).unsqueeze(-1)
    return torch.addcmul(flip, flip, beta_odd, value=-1.0)


class GatedDeltaUnit(nn.Module):
    """One gated-delta layer over a whole sequence: (B, T, d) odd input -> odd and even states.

    The invariant features e_t of (u_t, u_{t-1}) are all O(1) for an RMS-normalised input (whose
    squared norm is d): dots and squared norms are divided by d, and the bilinear terms
    (L_k u_t)(R_k u_t) and (L_k u_t)(R_k u_{t-1}) use projections initialised with variance 1/d,
    so each factor has unit variance. Without the scaling the features grow with d and, at
    d = 32, most gates start saturated. The current-step terms (L_k u_t)(R_k u_t) are quadratic
    forms of u_t: they see its direction, which the RMSNorm in front keeps (it removes only the
    norm), so a gate can tell one token from another (what parity needs).

    Args:
        stream_dim: size d of the odd input (and of W u_t, the odd state).
        even_dim: size of the even state.
        delta_rank: number k of low-rank bilinear pairs (L_k, R_k); 2k bilinear invariants.
        temperature: sharpness of the seam gate.
        seam: False fixes s_t = 0, so the odd decay (1 - beta_t) stays in (0, 1) (the ablation).
        seam_gate_init: the seam gate's value at initialisation (its bias; its weights start at 0, so it starts the same for every input).
        use_parallel_scan: the scan op (True) or the float64 sequential reference loop (False).
    """

    def __init__(
        self,
        stream_dim: int,
        even_dim: int,
        delta_rank: int,
        temperature: float,
        seam: bool = True,
        seam_gate_init: float = 0.05,
        use_parallel_scan: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.seam = seam
        self.use_parallel_scan = use_parallel_scan
        self.stream_dim, self.even_dim = stream_dim, even_dim
        num_invariants = NUM_BASE_INVARIANTS + 2 * delta_rank
        self.bilinear_left = nn.Linear(stream_dim, delta_rank, bias=False)
        self.bilinear_right = nn.Linear(stream_dim, delta_rank, bias=False)
        # Everything computed from the invariants comes out of one matmul, in this order: seam
        # score (1, only with the seam), update gate (stream_dim + even_dim), even candidate (even_dim).
        self.num_seam_scores = 1 if seam else 0
        self.from_invariants = nn.Linear(num_invariants, self.num_seam_scores + stream_dim + 2 * even_dim)
        self.odd_input = nn.Linear(stream_dim, stream_dim, bias=False)
        with torch.no_grad():
            nn.init.normal_(self.bilinear_left.weight, std=stream_dim**-0.5)
            nn.init.normal_(self.bilinear_right.weight, std=stream_dim**-0.5)
            # A slow update (beta ~ 0.27) at the start, so the state carries memory from the first
            # step; the seam gate starts at seam_gate_init whatever the input (see Z2GatedDeltaRNN).
            seam_rows = self.num_seam_scores
            if seam:
                self.from_invariants.weight[0].zero_()
                self.from_invariants.bias[0] = math.log(seam_gate_init / (1.0 - seam_gate_init)) * temperature
            self.from_invariants.bias[seam_rows : seam_rows + stream_dim + even_dim] = -1.0

    def invariants(
        self, u: torch.Tensor, u_before: torch.Tensor | None = None, kernel: DeltaKernel | None = None
    ) -> torch.Tensor:
        """Features of (u_t, u_{t-1}) unchanged by u -> -u, (B, T, 3 + 2 delta_rank).

        u_{-1} is `u_before` (B, d), the input of the step before the chunk (stateful training),
        else 0. With `kernel` (the fused CPU kernels) the elementwise part runs in one kernel call."""
        if u_before is not None:  # features of the chunk with its previous step in front, minus that step
            return self.invariants(torch.cat([u_before.unsqueeze(1), u], dim=1), kernel=kernel)[:, 1:]
        # One matmul for both bilinear projections (they read the same input).
        left_right = nn.functional.linear(u, torch.cat([self.bilinear_left.weight, self.bilinear_right.weight]))
        if kernel is not None:
            return delta_cpu_kernel.invariant_features(kernel, u, left_right)

        def previous(values: torch.Tensor) -> torch.Tensor:  # shift one step later in time
            return nn.functional.pad(values[:, :-1], (0, 0, 1, 0) if values.dim() == 3 else (1, 0))

        width = self.stream_dim
        squared_norm = u.pow(2).sum(-1) / width
        dot = nn.functional.pad((u[:, 1:] * u[:, :-1]).sum(-1), (1, 0)) / width
        left, right = left_right.chunk(2, -1)
        base = torch.stack([dot, squared_norm, previous(squared_norm)], dim=-1)
        return torch.cat([base, left * right, left * previous(right)], dim=-1)

    def gate_preactivations(self, features: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Inputs of the seam sigmoid (score / temperature, (B, T); None without the seam), of the
        update sigmoid (B, T, stream + even) and of the candidate tanh (B, T, even)."""
        score, update, candidate = self.from_invariants(features).split(
            [self.num_seam_scores, self.stream_dim + self.even_dim, self.even_dim], dim=-1
        )
        return (score.squeeze(-1) / self.temperature if self.seam else None), update, candidate

    def gates(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Seam gate s (B, T; 0 without the seam), update gate beta (B, T, stream + even) and even
        candidate (B, T, even)."""
        score, update, candidate = self.gate_preactivations(features)
        seam = torch.sigmoid(score) if score is not None else update.new_zeros(update.shape[:-1])
        return seam, torch.sigmoid(update), torch.tanh(candidate)

    def scan(self, decay: torch.Tensor, drive: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_parallel_scan:
            return linear_scan(decay, drive, h0)
        return linear_scan_reference(decay, drive, h0).to(drive.dtype)

    def odd_decays(self, u: torch.Tensor) -> torch.Tensor:
        """The decays a_t (B, T, stream_dim) of the odd recurrence h_odd,t = a_t h_odd,{t-1} + b_t that
        forward scans: the exact influence of step s on step t is prod_{k=s+1..t} a_k (influence maps)."""
        seam, beta, _ = self.gates(self.invariants(u))
        return flipped_decay(seam, beta[..., : self.stream_dim])

    def fused_kernel(self, u: torch.Tensor) -> DeltaKernel | None:
        """The fused CPU kernels where they compute this input (else None: the torch path). The
        reference loop (use_parallel_scan=False) and a torch function mode (the audit's gate
        recorder, which must see the gate ops) take the torch path."""
        if self.use_parallel_scan and not torch.overrides._is_torch_function_mode_enabled():
            return delta_cpu_kernel.kernel_for(u)
        return None

    def states(self, u: torch.Tensor, state: tuple[torch.Tensor, ...] | None, kernel: DeltaKernel | None):
        """(h_odd, h_even, final state, invariant features) of the chunk u from `state`, through the
        fused kernels or (kernel None) the torch ops that define them."""
        h_odd0, h_even0, u_before = (None, None, None) if state is None else state
        features = self.invariants(u, u_before, kernel)
        if kernel is not None:
            h_odd, h_even = delta_cpu_kernel.gated_states(
                kernel,
                features,
                (self.from_invariants.weight, self.from_invariants.bias),
                u,
                self.odd_input.weight,
                (h_odd0, h_even0),
                self.even_dim,
                self.temperature if self.seam else None,
            )
        else:
            odd_drive = self.odd_input(u)
            seam, beta, even_candidate = self.gates(features)
            beta_odd, beta_even = beta.split([self.stream_dim, self.even_dim], dim=-1)
            # Odd and even channels are scanned separately: concatenating them along the channel
            # axis (and splitting the gradient back) costs more on CPU than a second scan call.
            h_odd = self.scan(flipped_decay(seam, beta_odd), beta_odd * odd_drive, h_odd0)
            h_even = self.scan(1.0 - beta_even, beta_even * even_candidate, h_even0)
        return h_odd, h_even, (h_odd[:, -1], h_even[:, -1], u[:, -1]), features

    def forward(self, u: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None, with_diagnostics: bool = True):
        """u: (B, T, d) -> (h_odd, h_even, diagnostics (None unless `with_diagnostics`), final state).

        `state` is (h_odd, h_even, u) at the step before the chunk (None: zeros); the final state
        is the same triple at the chunk's last step, so chunks chained by it compute exactly what
        one pass over their concatenation computes. The diagnostics cost a second pass over the
        gates and two over the states, so the model asks for them only when its caller does."""
        h_odd, h_even, final_state, features = self.states(u, state, self.fused_kernel(u))
        diagnostics = None
        if with_diagnostics:
            seam, beta, _ = self.gates(features)
            diagnostics = {"gate": seam, "parity_energy": parity_energy(h_even, h_odd), "update_gate": beta.mean(-1)}
        return h_odd, h_even, diagnostics, final_state


class GatedDeltaBlock(nn.Module):
    """Pre-norm residual block: r + out(h_odd * sigmoid(G h_even)) with h from a GatedDeltaUnit.

    The even state modulates the odd one multiplicatively (invariant times odd is odd); the
    layer-to-layer projection `out` has rank `delta_rank` when that is below the stream size.
    """

    def __init__(
        self,
        stream_dim: int,
        even_dim: int,
        delta_rank: int,
        temperature: float,
        seam: bool,
        seam_gate_init: float,
        use_parallel_scan: bool,
    ) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(stream_dim)
        self.unit = GatedDeltaUnit(
            stream_dim, even_dim, delta_rank, temperature, seam, seam_gate_init, use_parallel_scan
        )
        self.even_modulation = nn.Linear(even_dim, stream_dim)
        self.out = (
            LowRankLinear(stream_dim, stream_dim, delta_rank)
            if delta_rank < stream_dim
            else nn.Linear(stream_dim, stream_dim, bias=False)
        )

    def forward(
        self, stream: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None, with_diagnostics: bool = True
    ):
        """-> (new stream, diagnostics of the unit, final state of the unit). The norm and the
        modulation run in the unit's fused CPU kernels where the unit does."""
        kernel = self.unit.fused_kernel(stream)
        if kernel is None:
            normed = self.norm(stream)
        else:
            normed = delta_cpu_kernel.rms_norm(kernel, stream, self.norm.weight, self.norm.eps)
        h_odd, h_even, diagnostics, final_state = self.unit(normed, state, with_diagnostics)
        modulation = self.even_modulation(h_even)
        if kernel is None:
            gated = h_odd * torch.sigmoid(modulation)
        else:
            gated = delta_cpu_kernel.modulated(kernel, h_odd, modulation)
        # r + out(gated) as one addmm: the matmul writes the sum, with no (B, T, d) product in between.
        width = stream.shape[-1]
        updated = torch.addmm(stream.reshape(-1, width), gated.reshape(-1, width), self.out.weight.t())
        return updated.view_as(stream), diagnostics, final_state


@register_model("z2_delta")
class Z2GatedDeltaRNN(SequenceModel):
    """Stacked Z2 gated-delta blocks with an odd readout, predicting x_{t+1} at every step.

    The readout reads the residual stream without a final norm, so predictions keep the scale of
    the input (a regression target scales with x).

    Args:
        output_dim: prediction size; default: the input size (input_dim, or vocab_size for token
            ids), as a next-observation or next-token model predicts.
        input_dim: observation size; or
        vocab_size: number of token ids, embedded into the odd stream (x -> -x equivariance then
            concerns the embeddings and has no meaning for the task).
        hidden_dim: state size per layer, split equally into even and odd channels; the odd half
            is also the width of the residual stream.
        delta_rank: number of bilinear pairs in the gate invariants and rank of the layer-to-layer
            projections.
        seam: True (the model) lets the seam gate flip the odd state, a_t = (1 - beta_t)(1 - 2 s_t)
            in (-1, 1); False fixes s_t = 0, a_t = 1 - beta_t in (0, 1) (the ablation that cannot
            solve parity).
        seam_gate_init: the seam gate s at initialisation, in (0, 1); unused without the seam.
            0.05 (default) starts with the chart almost never flipped, so the odd state keeps
            memory from the first step. 0.5 starts with a_t = 0, where keeping more memory pulls
            s toward 0 and toward 1 equally, so only what the flip is for decides which inputs
            flip it: on parity it makes the seam learnable for more seeds (docs/models.md).
        use_parallel_scan: False runs the sequential reference loop (for checks and timing).
        num_layers: number of residual blocks.
        temperature: sharpness of the seam gate.
    """

    supported_tasks = ("regression", "classification")
    supported_inputs = ("vectors", "tokens")

    def __init__(
        self,
        output_dim: int | None = None,
        input_dim: int | None = None,
        vocab_size: int | None = None,
        hidden_dim: int = 64,
        delta_rank: int = 8,
        use_parallel_scan: bool = True,
        num_layers: int = 1,
        temperature: float = 0.05,
        seam: bool = True,
        seam_gate_init: float = 0.05,
    ) -> None:
        super().__init__()
        check_input_sizes(input_dim, vocab_size)
        if output_dim is None:
            output_dim = input_dim if vocab_size is None else vocab_size
        for name, value in (("output_dim", output_dim), ("delta_rank", delta_rank), ("num_layers", num_layers)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1.")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0.")
        if not 0.0 < seam_gate_init < 1.0:
            raise ValueError(
                f"seam_gate_init={seam_gate_init} must lie strictly between 0 and 1 (it is a sigmoid's value)."
            )
        even_dim, odd_dim = split_hidden_dim(hidden_dim, "z2_delta")
        self.embed = input_layer(input_dim, vocab_size, odd_dim)
        self.blocks = nn.ModuleList(
            GatedDeltaBlock(odd_dim, even_dim, delta_rank, temperature, seam, seam_gate_init, use_parallel_scan)
            for _ in range(num_layers)
        )
        self.readout = nn.Linear(odd_dim, output_dim, bias=False)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, input_dim) or token ids (B, T) -> (B, T, output_dim); diagnostics are those of
        the first block."""
        output, first_diagnostics, _ = self._run(x, None, return_diagnostics)
        return (output, first_diagnostics) if return_diagnostics else output

    def forward_with_state(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None):
        """(outputs, final state) of one chunk started from `state` (None: zeros), for stateful training.

        The state is a flat tuple, three tensors per block: its odd and even states and its
        (normalised) input at the last step, which the next chunk's first invariants read as u_{t-1}."""
        output, _, final_state = self._run(x, state, False)
        return output, final_state

    def _run(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None, return_diagnostics: bool):
        stream = self.embed(x)
        first_diagnostics, final_state = None, []
        for index, block in enumerate(self.blocks):
            block_state = None if state is None else state[3 * index : 3 * index + 3]
            stream, diagnostics, block_state = block(stream, block_state, return_diagnostics and index == 0)
            final_state.extend(block_state)
            first_diagnostics = diagnostics if index == 0 else first_diagnostics
        return self.readout(stream), first_diagnostics, tuple(final_state)
