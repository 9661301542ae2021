"""A run's validation slice: its per-step diagnostics, collected alike by the heatmap callback and
the post-hoc script, and the figures drawn from it.

The slice is a fixed, contiguous stretch of the validation segment: for every step t of the slice
the model reads the window x[t-H+1 .. t] (H = data.history_length, as in training) and the
diagnostics of its last step are kept. That is the state from which the model makes its scored
prediction of x_{t+1} in target mode `last`, and a full-context step in mode `next_step`, so both
modes see exactly the context length they were trained on, and t runs over consecutive steps.
Regime and transition flags are those of step t itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from models.parity import K_STAR
from visualization.gate_plots import plot_gate_heatmap, plot_gate_statistics, plot_parity_energy_trajectory


@dataclass
class SliceDiagnostics:
    """Diagnostics of consecutive validation steps, one value per step t (see the module docstring)."""

    steps: np.ndarray
    regime: np.ndarray
    transition: np.ndarray
    diagnostics: dict[str, np.ndarray]
    history_length: int

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain numbers only, so `torch.load(..., weights_only=True)` reads it back."""
        return {
            "steps": torch.as_tensor(self.steps),
            "regime": torch.as_tensor(self.regime),
            "transition": torch.as_tensor(self.transition),
            "history_length": self.history_length,
            "k_star": K_STAR,
            "diagnostics": {k: torch.as_tensor(v) for k, v in self.diagnostics.items()},
            **self.seed_names(),
        }

    def seed_names(self) -> dict[str, torch.Tensor]:
        """The regime and gate under the names the seed's "Visualize Results" snippet reads."""
        gate = self.diagnostics.get("gate")
        return {
            "regimes": torch.as_tensor(self.regime),
            **({} if gate is None else {"gate_activation": torch.as_tensor(gate)}),
        }


def collect_slice_diagnostics(
    module: nn.Module, datamodule: Any, length: int = 500, offset: int = 0, split: str = "val", batch_size: int = 256
) -> SliceDiagnostics:
    """Run `module` on `length` consecutive steps of a split, from `offset` steps after its first full window.

    Needs a set-up DataModule with a generated `sequence`, `bounds` and `history_length`
    (data=antipodal). Runs in eval mode without gradients and restores the module's mode.
    """
    if length < 1 or offset < 0:
        raise ValueError(f"length={length} must be >= 1 and offset={offset} >= 0.")
    sequence, bounds = getattr(datamodule, "sequence", None), getattr(datamodule, "bounds", None)
    if sequence is None or bounds is None or not hasattr(datamodule, "history_length"):
        raise ValueError(
            f"datamodule {type(datamodule).__name__} exposes no generated sequence, bounds and "
            "history_length (set it up first; data=antipodal has them)."
        )
    if split not in bounds:
        raise ValueError(f"split={split!r} is not one of {', '.join(bounds)}.")
    history = datamodule.history_length
    start, stop = bounds[split]
    first = start + history - 1 + offset  # the first step whose window lies inside the split
    last = min(first + length, stop)
    if first >= last:
        raise ValueError(
            f"offset={offset} leaves no steps in the {split} segment, which has "
            f"{stop - start - history + 1} steps with a full window."
        )
    x = torch.as_tensor(sequence.x[first - history + 1 : last], dtype=torch.float32)
    # (steps, history, *step): window t ends at step t; a step is a vector or a (C, H, W) field.
    windows = x.unfold(0, history, 1).movedim(-1, 1)
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for chunk in windows.split(batch_size):
                _, diagnostics = module(chunk.to(device), return_diagnostics=True)
                for name, values in diagnostics.items():
                    parts.setdefault(name, []).append(values[:, -1].float().cpu())
    finally:
        module.train(was_training)
    return SliceDiagnostics(
        steps=np.arange(first, last),
        regime=np.asarray(sequence.regime[first:last]),
        transition=np.asarray(sequence.transition[first:last]),
        diagnostics={name: torch.cat(values).numpy() for name, values in parts.items()},
        history_length=history,
    )


NOT_GATES = ("parity_energy", "state")  # per-step diagnostics that are no gate (state is a vector per step)


def gate_series(diagnostics: Mapping[str, Any]) -> dict[str, Any]:
    """The diagnostics that are gates: one value in [0, 1] per step."""
    return {name: values for name, values in diagnostics.items() if name not in NOT_GATES}


def draw_slice_figures(data: SliceDiagnostics, output_dir: str | Path, title: str) -> dict[str, Figure]:
    """The heatmap, parity-energy and gate-statistics figures of a slice, saved as PNGs in `output_dir`.

    A figure is left out when its inputs are missing: no gates (lstm, gru) gives none, no parity
    energy no trajectory, and fewer than two transition or stable steps no statistics.
    """
    output_dir = Path(output_dir)
    gates = gate_series(data.diagnostics)
    steps = f"steps {data.steps[0]}-{data.steps[-1]}"  # of whichever split the slice was cut from
    figures: dict[str, Figure] = {}
    if gates:
        figures["gate_heatmap"] = plot_gate_heatmap(
            gates,
            data.regime,
            data.transition,
            save_path=output_dir / "gate_heatmap.png",
            first_step=int(data.steps[0]),
            title=f"{title}: gate activations, {steps}",
        )
    if "gate" in gates and "parity_energy" in data.diagnostics:
        figures["parity_energy"] = plot_parity_energy_trajectory(
            data.diagnostics["parity_energy"],
            gates["gate"],
            regime_sequence=data.regime,
            transition_mask=data.transition,
            save_path=output_dir / "parity_energy.png",
            first_step=int(data.steps[0]),
            title=f"{title}: parity energy and seam gate, {steps}",
        )
    if "gate" in gates and min(data.transition.sum(), (~data.transition).sum()) >= 2:
        figures["gate_statistics"] = plot_gate_statistics(
            gates["gate"],
            data.transition,
            save_path=output_dir / "gate_statistics.png",
            title=f"{title}: seam gate at transition vs stable steps, {steps}",
        )
    return figures
