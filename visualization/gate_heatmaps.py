"""Rebuild a finished run's gate figures: heatmap, parity-energy trajectory, gate-vs-transition statistics.

    python visualization/gate_heatmaps.py --experiment logs/train/runs/<run>
    python visualization/gate_heatmaps.py --experiment <run> --checkpoint <run>/checkpoints/last.ckpt --length 300
    python visualization/gate_heatmaps.py --checkpoint <run>/checkpoints/epoch_003.ckpt   # its run dir is found

The command rebuilds every figure of a finished run from its checkpoint (by default the one its
metrics.json evaluated, else last.ckpt) and its saved `.hydra/config.yaml`, into
`<run>/figures/posthoc/` (or `--output`), on the validation slice of visualization/gate_slices.py.

The pieces live apart: plotting in visualization/gate_plots.py, the diagnostics hook in
visualization/gate_hooks.py, the slice in visualization/gate_slices.py, the statistics in
analysis/statistics.py. Their public names are re-exported here, the import path the seed snippets
use (`from visualization.gate_heatmaps import plot_gate_heatmap`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from analysis.statistics import SIGNIFICANCE, GateTransitionStatistics, gate_transition_statistics
from visualization.gate_hooks import GateActivationHook
from visualization.gate_plots import plot_gate_heatmap, plot_gate_statistics, plot_parity_energy_trajectory
from visualization.gate_slices import SliceDiagnostics, collect_slice_diagnostics, draw_slice_figures, gate_series
from visualization.run_arguments import add_run_arguments, load_chosen_run

__all__ = [
    "SIGNIFICANCE",
    "GateActivationHook",
    "GateTransitionStatistics",
    "SliceDiagnostics",
    "collect_slice_diagnostics",
    "draw_slice_figures",
    "gate_series",
    "gate_transition_statistics",
    "main",
    "plot_gate_heatmap",
    "plot_gate_statistics",
    "plot_parity_energy_trajectory",
]


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Rebuild a finished run's gate figures from its checkpoint and .hydra config; returns the PNG paths."""
    parser = argparse.ArgumentParser(description="Rebuild the gate figures of a finished run.")
    add_run_arguments(parser)
    parser.add_argument("--output", type=Path, default=None, help="figure directory (default: <run>/figures/posthoc)")
    parser.add_argument("--length", type=int, default=500, help="validation steps to draw (default 500)")
    parser.add_argument(
        "--offset", type=int, default=0, help="steps after the first full validation window (default 0)"
    )
    args = parser.parse_args(argv)
    run = load_chosen_run(parser, args)
    module, checkpoint = run.module, run.checkpoint
    data = collect_slice_diagnostics(module, run.datamodule, length=args.length, offset=args.offset)
    if not gate_series(data.diagnostics):
        sys.exit(f"model {module.hparams.model_type} returns no gate diagnostics; there is nothing to draw.")
    output = args.output or args.experiment / "figures" / "posthoc"
    figures = draw_slice_figures(data, output, f"{module.hparams.model_type} ({checkpoint.name})")
    torch.save(data.to_dict(), output / "diagnostics.pt")
    paths = {name: output / f"{name}.png" for name in figures}
    for path in paths.values():
        print(path)
    return paths


if __name__ == "__main__":
    main()
