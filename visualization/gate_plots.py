"""Figures of gate behaviour: heatmap over time, parity-energy trajectory, gate-vs-transition statistics.

Every plotting function returns a matplotlib Figure (built without pyplot, so no global state and no
backend choice is imposed on the caller) and writes a PNG when given `save_path`. The statistics
printed on the gate-statistics figure come from analysis/statistics.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.statistics import SIGNIFICANCE, gate_transition_statistics
from models.parity import K_STAR

DPI = 150
REGIME_COLORS = {1: "#4C72B0", -1: "#DD8452"}  # seaborn's first two "deep" colours
TRANSITION_COLOR = "0.55"
SWITCH_STYLE = {"color": "black", "linestyle": "--", "linewidth": 0.8}
GATE_CMAP = "viridis"

ArrayLike = Any  # numpy arrays, torch tensors or sequences of numbers


def _as_numpy(values: ArrayLike, name: str, dtype: Any = float) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float().numpy() if dtype is float else values.detach().cpu().numpy()
    array = np.asarray(values, dtype=dtype)
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass at least one time step.")
    return array


def _series(values: ArrayLike, name: str, length: int | None = None, dtype: Any = float) -> np.ndarray:
    """A 1-D per-step series, checked against the length of the series it is drawn with."""
    array = _as_numpy(values, name, dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} has shape {array.shape}; pass one value per time step (a 1-D series).")
    if length is not None and len(array) != length:
        raise ValueError(f"{name} has {len(array)} steps but the gate series has {length}; pass one value per step.")
    return array


def _time_window(length: int, first_step: int, time_range: tuple[int, int] | None) -> slice:
    """Index slice of the steps first_step + i inside `time_range` = (start, stop), stop exclusive."""
    if time_range is None:
        return slice(0, length)
    start, stop = (int(v) - first_step for v in time_range)
    start, stop = max(start, 0), min(stop, length)
    if start >= stop:
        raise ValueError(
            f"time_range={tuple(time_range)} holds none of the steps {first_step}..{first_step + length - 1}."
        )
    return slice(start, stop)


def _shown_steps(
    length: int,
    regime_sequence: ArrayLike | None,
    transition_mask: ArrayLike | None,
    first_step: int,
    time_range: tuple[int, int] | None,
) -> tuple[slice, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """What a time-series figure shows: (the window into `length` values, its step numbers, and the
    regime and transition mask in that window, each None where not given)."""
    regime = None if regime_sequence is None else _series(regime_sequence, "regime_sequence", length, int)
    transition = None if transition_mask is None else _series(transition_mask, "transition_mask", length, bool)
    window = _time_window(length, first_step, time_range)
    steps = first_step + np.arange(length)[window]
    return (
        window,
        steps,
        None if regime is None else regime[window],
        None if transition is None else transition[window],
    )


def _label_time_axis(ax, steps: np.ndarray) -> None:
    ax.set_xlabel("time step t")
    ax.set_xlim(steps[0] - 0.5, steps[-1] + 0.5)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the runs of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _switch_indices(regime: np.ndarray) -> np.ndarray:
    return np.flatnonzero(regime[1:] != regime[:-1]) + 1


def _mark_transitions(ax, steps: np.ndarray, transition: np.ndarray | None, regime: np.ndarray | None) -> None:
    """Shade transition windows and draw a dashed line at every regime switch.

    Step t covers [t - 0.5, t + 0.5). A switch at s (r_s != r_{s-1}) first changes x_{s+1}, so its
    line sits at s + 0.5, where it first affects x: the observable window s+1 .. s+w starts there.
    """
    if transition is not None:
        for start, stop in _runs(transition):
            ax.axvspan(
                steps[start] - 0.5,
                steps[stop - 1] + 0.5,
                color=TRANSITION_COLOR,
                alpha=0.25,
                linewidth=0,
                gid="transition",
            )
    if regime is not None:
        for index in _switch_indices(regime):
            ax.axvline(steps[index] + 0.5, gid="switch", **SWITCH_STYLE)


def _draw_regime(ax, steps: np.ndarray, regime: np.ndarray | None, transition: np.ndarray | None) -> None:
    """The sign of the dynamics as coloured bands at +1 / -1 (where known), with transition windows and switches."""
    _mark_transitions(ax, steps, transition, regime)
    ax.set_ylim(-1.3, 1.3)
    if regime is None:
        ax.set_yticks([])
        ax.set_ylabel("transitions")
        return
    # Drawn one step late, as the sign r_{t-1} of the dynamics that produced x_t: its colour changes
    # where the switch lines are, at the first observation a switch changes.
    for value, color in REGIME_COLORS.items():
        for start, stop in _runs(regime == value):
            ax.fill_between([steps[start] + 0.5, steps[stop - 1] + 1.5], 0, value, color=color, alpha=0.85, linewidth=0)
    ax.set_yticks([-1, 1], ["-1", "+1"])
    ax.set_ylabel("sign $r_{t-1}$\nproducing $x_t$")
    ax.axhline(0, color="black", linewidth=0.5)


def _legend_handles(regime: np.ndarray | None, transition: np.ndarray | None) -> list:
    handles = []
    if regime is not None:
        handles += [Patch(color=REGIME_COLORS[1], label="regime +1"), Patch(color=REGIME_COLORS[-1], label="regime -1")]
        handles.append(Line2D([], [], label="regime switch", **SWITCH_STYLE))
    if transition is not None:
        handles.append(Patch(color=TRANSITION_COLOR, alpha=0.25, label="transition window"))
    return handles


def _finish(fig: Figure, save_path: str | Path | None) -> Figure:
    if save_path is not None:
        save_path = Path(save_path)
        save_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, dpi=DPI)
    return fig


def plot_gate_heatmap(
    gate_activations: ArrayLike | Mapping[str, ArrayLike],
    regime_sequence: ArrayLike | None = None,
    transition_mask: ArrayLike | None = None,
    time_range: tuple[int, int] | None = None,
    save_path: str | Path | None = None,
    first_step: int = 0,
    title: str | None = None,
) -> Figure:
    """Gate values over time as a heatmap (one row per gate), above the regime with transitions marked.

    Args:
        gate_activations: one series (T,), rows (N, T), or {name: (T,)} for labelled rows
            (e.g. the `gate` and `update_gate` diagnostics of a model).
        regime_sequence: r_t in {+1, -1} per step; draws the regime panel and the switch lines.
        transition_mask: True at transition steps; shaded in the regime panel (drawn for either).
        time_range: (start, stop) steps to show, in the units of the x axis.
        save_path: where to write the PNG.
        first_step: time index of the first value (e.g. where the validation segment starts).
        title: figure title.
    """
    if isinstance(gate_activations, Mapping):
        labels = list(gate_activations)
        rows = np.stack([_series(gate_activations[name], f"gate_activations[{name!r}]") for name in labels])
    else:
        rows = _as_numpy(gate_activations, "gate_activations")
        if rows.ndim not in (1, 2):
            raise ValueError(f"gate_activations has shape {rows.shape}; pass (T,), (N, T) or a dict of (T,) series.")
        rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
        labels = ["gate"] if len(rows) == 1 else [f"gate {i}" for i in range(len(rows))]
    window, steps, regime, transition = _shown_steps(
        rows.shape[1], regime_sequence, transition_mask, first_step, time_range
    )
    rows = rows[:, window]

    panels = 2 if regime is not None or transition is not None else 1
    fig = Figure(figsize=(14, 1.6 + 0.55 * len(rows) + 1.3 * (panels - 1)), layout="constrained")
    axes = fig.subplots(
        panels,
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [max(1.5, 0.55 * len(rows) + 0.6)] + [1.1] * (panels - 1)},
    )[:, 0]
    heat = axes[0]
    image = heat.imshow(
        rows,
        aspect="auto",
        cmap=GATE_CMAP,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, len(rows) - 0.5, -0.5),
    )
    # The colour scale is the gate's full range [0, 1]; the label gives each row's actual range.
    heat.set_yticks(
        range(len(rows)), [f"{label}\n[{row.min():.3g}, {row.max():.3g}]" for label, row in zip(labels, rows)]
    )
    heat.set_ylabel("gate")
    # Switch lines only: shading would change the colours that encode the gate value.
    _mark_transitions(heat, steps, None, regime)
    for line in heat.lines:
        line.set_color("white")
    fig.colorbar(image, ax=heat, label="gate value", pad=0.01, aspect=12)
    if panels == 2:
        _draw_regime(axes[1], steps, regime, transition)
    handles = _legend_handles(regime, transition)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    _label_time_axis(axes[-1], steps)
    heat.set_title(title or "Gate activations over time")
    return _finish(fig, save_path)


def plot_parity_energy_trajectory(
    parity_energies: ArrayLike,
    gate_activations: ArrayLike,
    k_star: float = K_STAR,
    regime_sequence: ArrayLike | None = None,
    transition_mask: ArrayLike | None = None,
    time_range: tuple[int, int] | None = None,
    save_path: str | Path | None = None,
    first_step: int = 0,
    title: str | None = None,
) -> Figure:
    """Parity energy alpha_minus(h_t) with the k* line, the seam gate below it, and the regime at the bottom.

    Transition windows are shaded and switches marked in every panel; a box states how often the
    parity energy is above k*, in transition windows and outside them.
    """
    energy = _series(parity_energies, "parity_energies")
    gate = _series(gate_activations, "gate_activations", len(energy))
    window, steps, regime, transition = _shown_steps(
        len(energy), regime_sequence, transition_mask, first_step, time_range
    )
    energy, gate = energy[window], gate[window]

    panels = 3 if regime is not None else 2
    fig = Figure(figsize=(14, 2.6 * panels), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1.6, 1.0][:panels]})
    ax_energy, ax_gate = axes[0], axes[1]
    ax_energy.plot(steps, energy, color="#55A868", linewidth=1.2, label=r"parity energy $\alpha_-(h_t)$")
    k_star_label = f"k* = 1/(2 ln 2) = {k_star:.3f}" if math.isclose(k_star, K_STAR) else f"k* = {k_star:.3f}"
    ax_energy.axhline(k_star, color="#C44E52", linestyle="-.", linewidth=1.4, label=k_star_label, gid="k_star")
    ax_energy.set_ylim(-0.02, 1.02)
    ax_energy.set_ylabel(r"parity energy $\alpha_-$")
    above = energy > k_star
    lines = [f"above k*: {above.mean():.1%} of steps"]
    if transition is not None and transition.any() and (~transition).any():
        lines.append(f"in transition windows: {above[transition].mean():.1%}, outside: {above[~transition].mean():.1%}")
        lines.append(
            f"mean $\\alpha_-$: {energy[transition].mean():.3f} in transitions, "
            f"{energy[~transition].mean():.3f} outside"
        )
    ax_energy.text(
        0.005,
        0.97,
        "\n".join(lines),
        transform=ax_energy.transAxes,
        va="top",
        fontsize=8,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
    )
    ax_gate.plot(steps, gate, color="#8172B3", linewidth=1.2, label="seam gate $g_t$")
    ax_gate.set_ylim(-0.02, 1.02)
    ax_gate.set_ylabel("seam gate $g_t$")
    for ax in (ax_energy, ax_gate):
        _mark_transitions(ax, steps, transition, regime)
    if regime is not None:
        _draw_regime(axes[2], steps, regime, transition)
    handles = ax_energy.get_legend_handles_labels()[0] + [ax_gate.lines[0]] + _legend_handles(regime, transition)
    ax_energy.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    _label_time_axis(axes[-1], steps)
    ax_energy.set_title(title or "Parity energy and seam gate over time")
    return _finish(fig, save_path)


def plot_gate_statistics(
    gate_activations: ArrayLike,
    transition_mask: ArrayLike,
    save_path: str | Path | None = None,
    title: str | None = None,
    alpha: float = SIGNIFICANCE,
) -> Figure:
    """Gate values at stable vs transition steps as violins and histograms, with the Welch t-test,
    Cohen's d and AUROC of `gate_transition_statistics` printed on the figure."""
    statistics = gate_transition_statistics(gate_activations, transition_mask, alpha)
    gate = _series(gate_activations, "gate_activations")
    transition = _series(transition_mask, "transition_mask", len(gate), bool)
    groups = np.where(transition, "transition", "stable")
    palette = {"stable": "#4C72B0", "transition": "#C44E52"}
    order = ["stable", "transition"]

    fig = Figure(figsize=(12, 6.2), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.4], height_ratios=[5, 1])
    ax_violin, ax_hist = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_text = fig.add_subplot(grid[1, :])
    sns.violinplot(
        x=groups,
        y=gate,
        hue=groups,
        order=order,
        hue_order=order,
        palette=palette,
        cut=0,
        inner="quart",
        density_norm="width",
        legend=False,
        ax=ax_violin,
    )
    ax_violin.set_xticks(
        [0, 1], [f"stable\n(n = {statistics.n_stable})", f"transition\n(n = {statistics.n_transition})"]
    )
    ax_violin.set_xlabel("step kind")
    ax_violin.set_ylabel("gate value")
    ax_violin.set_title("Gate by step kind (lines: quartiles)")
    span = float(gate.max() - gate.min())
    bins = np.linspace(gate.min(), gate.max() + max(span, 1e-6) * 1e-3, 31)
    sns.histplot(
        x=gate,
        hue=groups,
        hue_order=order,
        palette=palette,
        bins=bins,
        stat="density",
        common_norm=False,
        element="step",
        alpha=0.35,
        ax=ax_hist,
    )
    ax_hist.get_legend().set_title("step kind")
    ax_hist.set_xlabel("gate value")
    ax_hist.set_ylabel("density (each kind normalised)")
    ax_hist.set_title("Gate distributions")
    # A row of its own, so the layout engine keeps the statistics on the canvas.
    ax_text.axis("off")
    ax_text.text(
        0.5,
        0.5,
        statistics.summary(),
        ha="center",
        va="center",
        fontsize=10,
        family="monospace",
        transform=ax_text.transAxes,
        bbox={"boxstyle": "round", "facecolor": "#F7F7F7", "edgecolor": "0.6"},
    )
    fig.suptitle(title or "Does the gate fire at regime transitions?")
    return _finish(fig, save_path)
