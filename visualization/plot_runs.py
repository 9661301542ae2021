"""Training curves of finished runs from their TensorBoard events; sweeps compared by their swept hyperparameters.

    python visualization/plot_runs.py logs/train/runs/<run>                     # one run
    python visualization/plot_runs.py logs/train/runs/<a> logs/train/runs/<b>   # several runs overlaid
    python visualization/plot_runs.py logs/train/multiruns/<sweep>              # every job, and the sweep compared

A DIR is a run (it holds TensorBoard event files) or a sweep (it holds job dirs, as
`python train_hydra.py -m ...` writes them). Every run and job goes into `training_curves.png`;
each sweep also gets `sweep_<name>.png`: the final metrics of its jobs (metrics.json) against the
hyperparameters that differ between jobs (their .hydra/overrides.yaml), with `seed` treated as a
replicate (bars show the mean, error bars the standard deviation over seeds), and a printed table.
Figures go to --output, by default DIR/figures for one DIR and figures/ in the common parent of several.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import yaml
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visualization.sweep_summary import job_order

DPI = 150
# (tag, panel title, log-scale y) of the curves drawn, in order; panels whose tag no run logged are left out.
CURVES = [
    ("train/loss", "training loss (per step, smoothed)", True),
    ("val/mse", "validation MSE (dashed: predicting 0)", True),
    ("val/mse_transition", "validation MSE at transition steps", True),
    ("val/mse_stable", "validation MSE at stable steps", True),
    ("train/lr", "learning rate", False),
    ("train/grad_norm", "gradient norm (before clipping, smoothed)", True),
]
SMOOTHED = {"train/loss", "train/grad_norm"}
SWEEP_METRICS = ["val/mse", "test/mse", "val/mse_transition", "test/mse_transition"]
REPLICATE_KEYS = {"seed"}  # swept keys that repeat a configuration rather than change it


@dataclass
class Run:
    """One run directory: its scalars, final metrics and command-line overrides."""

    path: Path
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    metrics: dict[str, float]
    overrides: dict[str, str]
    label: str = ""
    model: str = ""
    swept: dict[str, str] = field(default_factory=dict)


def read_scalars(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} from every TensorBoard event file under `run_dir`, sorted by step."""
    merged: dict[str, list[tuple[int, float]]] = {}
    for events_dir in sorted({path.parent for path in run_dir.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0, "images": 1}).Reload()
        for tag in accumulator.Tags()["scalars"]:
            merged.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return {tag: tuple(np.array(column) for column in zip(*sorted(points))) for tag, points in merged.items()}


def read_run(run_dir: Path) -> Run:
    metrics_file, overrides_file = run_dir / "metrics.json", run_dir / ".hydra" / "overrides.yaml"
    record = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    overrides = (yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else []
    return Run(
        path=run_dir,
        scalars=read_scalars(run_dir),
        metrics=record.get("metrics", {}),
        overrides=dict(item.split("=", 1) for item in overrides if "=" in item),
        model=record.get("model", ""),
    )


def _is_job(path: Path) -> bool:
    return path.is_dir() and ((path / ".hydra").is_dir() or (path / "metrics.json").is_file())


def find_runs(directory: Path) -> tuple[list[Run], bool]:
    """The runs of a DIR argument and whether it is a sweep (a dir of job dirs, ordered by job number)."""
    jobs = [path for path in directory.iterdir() if _is_job(path)] if not _is_job(directory) else []
    if jobs:
        jobs.sort(key=job_order)
        return [read_run(job) for job in jobs], True
    return [read_run(directory)], False


def label_runs(runs: list[Run], sweep: bool) -> list[str]:
    """Set each run's label (its swept overrides, or its dir name) and return the swept keys."""
    keys = sorted({key for run in runs for key in run.overrides})
    swept = [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1] if sweep else []
    for run in runs:
        run.swept = {key: run.overrides.get(key, "(default)") for key in swept}
        name = ", ".join(f"{key}={value}" for key, value in run.swept.items()) if swept else run.path.name
        run.label = f"{run.path.name}: {name}" if sweep else (f"{name} ({run.model})" if run.model else name)
    return swept


REFERENCE_MODELS = ("hamilton_imm",)  # evaluated without training (the filter)


def _smooth(values: np.ndarray) -> np.ndarray:
    """TensorBoard's exponential moving average, debiased so the first points are not pulled to 0.

    The weight grows with the number of points (0.9 from 50 on), so a short curve is not flattened.
    """
    weight = min(0.9, max(0.0, 1.0 - 5.0 / len(values)))
    smoothed, average = np.empty_like(values, dtype=float), 0.0
    for index, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        smoothed[index] = average / (1 - weight ** (index + 1))
    return smoothed


def plot_training_curves(
    runs: list[Run], save_path: Path | None = None, curves: list[tuple[str, str, bool]] = CURVES
) -> Figure:
    """One panel per logged curve of `curves` ((tag, title, log-scale y)), every run overlaid in its own colour."""
    panels = [curve for curve in curves if any(curve[0] in run.scalars for run in runs)]
    if not panels:
        raise ValueError(
            f"none of the runs logged any of {', '.join(tag for tag, _, _ in curves)}; "
            "was TensorBoard logging on (logger=tensorboard)?"
        )
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(7 * columns, 3.4 * rows + 0.4 + 0.25 * len(runs)), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    colors = sns.color_palette("tab10" if len(runs) <= 10 else "husl", len(runs))
    for ax, (tag, title, log_scale) in zip(axes, panels):
        for run, color in zip(runs, colors):
            if tag not in run.scalars:
                continue
            steps, values = run.scalars[tag]
            if run.model in REFERENCE_MODELS:
                # An untrained reference is evaluated once: a level every model is judged against,
                # drawn across the whole panel like predicting 0, not as a dot at step 0.
                ax.axhline(values[-1], color=color, linestyle=":", linewidth=1.6, gid="reference")
                continue
            if tag in SMOOTHED and len(values) > 1:
                ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
                values = _smooth(values)
            ax.plot(steps, values, color=color, linewidth=1.4, marker="o" if len(steps) < 40 else None, markersize=3)
            if tag == "val/mse" and "val/mse_zero" in run.scalars:
                ax.plot(*run.scalars["val/mse_zero"], color=color, linestyle="--", linewidth=1.0)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(tag)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=color, linewidth=2, label=run.label) for run, color in zip(runs, colors)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(runs), 3), fontsize=8, frameon=False)
    fig.suptitle(f"Training curves of {len(runs)} run{'s' if len(runs) > 1 else ''}")
    if save_path is not None:
        fig.savefig(save_path, dpi=DPI)
    return fig


def sweep_table(runs: list[Run], swept: list[str]) -> pd.DataFrame:
    """One row per job: job dir, swept hyperparameters and final metrics (NaN where a job has none)."""
    rows = [
        {"job": run.path.name, **run.swept, **{m: run.metrics.get(m, np.nan) for m in SWEEP_METRICS}} for run in runs
    ]
    table = pd.DataFrame(rows)
    return table.drop(columns=[m for m in SWEEP_METRICS if table[m].isna().all()])


def plot_sweep(runs: list[Run], swept: list[str], name: str, save_path: Path | None = None) -> Figure:
    """Final metrics of a sweep's jobs against its swept hyperparameters, seeds pooled as replicates.

    One swept hyperparameter: bars per value. Two: bars per value of the first, coloured by the
    second. More: bars per combination.
    """
    table = sweep_table(runs, swept)
    metrics = [m for m in SWEEP_METRICS if m in table]
    if not metrics:
        raise ValueError(f"sweep {name} has no job with a metrics.json; nothing to compare.")
    factors = [key for key in swept if key not in REPLICATE_KEYS] or swept or ["job"]
    hue = None
    if len(factors) == 2:
        x, hue = factors
    elif len(factors) == 1:
        x = factors[0]
    else:
        x = "configuration"
        table[x] = table[factors].astype(str).agg(", ".join, axis=1)
    replicates = [key for key in swept if key in REPLICATE_KEYS]
    groups = table[x].nunique() * (table[hue].nunique() if hue else 1)
    fig = Figure(figsize=(max(4.5, 0.8 * groups + 1.5) * len(metrics), 5.0), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    # Points, not bars: metrics of competing models differ by percent, which bars from 0 would hide.
    colors = {"palette": "tab10"} if hue else {"color": "#4C72B0"}
    for ax, metric in zip(axes, metrics):
        sns.pointplot(
            data=table,
            x=x,
            y=metric,
            hue=hue,
            errorbar="sd" if replicates else None,
            dodge=0.3 if hue else False,
            linestyle="none",
            marker="D",
            markersize=7,
            capsize=0.1,
            ax=ax,
            **colors,
        )
        if replicates:
            sns.stripplot(
                data=table, x=x, y=metric, hue=hue, dodge=bool(hue), alpha=0.45, size=5, legend=False, ax=ax, **colors
            )
        zero = "val/mse_zero" if metric.startswith("val/") else "test/mse_zero"
        reference = [run.metrics[zero] for run in runs if zero in run.metrics]
        if metric.endswith("/mse") and reference:
            ax.axhline(np.mean(reference), color="black", linestyle="--", linewidth=1, label="predicting 0")
            ax.legend(fontsize=8)
        ax.set_title(metric)
        ax.set_xlabel(x)
        ax.set_ylabel(f"final {metric} (evaluated checkpoint)")
        ax.tick_params(axis="x", labelrotation=30 if x == "configuration" else 0)
    pooled = f"; diamonds: mean and s.d. over {', '.join(replicates)}, dots: single jobs" if replicates else ""
    fig.suptitle(f"Sweep {name}: {len(runs)} jobs by {', '.join(factors)}{pooled}")
    if save_path is not None:
        fig.savefig(save_path, dpi=DPI)
    return fig


def main(argv: list[str] | None = None) -> list[Path]:
    """Plot the runs and sweeps named on the command line; returns the PNG paths written."""
    parser = argparse.ArgumentParser(description="Plot training curves of runs and compare the jobs of sweeps.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run or sweep (multirun) directories")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="figure directory (default: DIR/figures for one DIR, else figures/ in their common parent)",
    )
    args = parser.parse_args(argv)
    for directory in args.dirs:
        if not directory.is_dir():
            parser.error(f"DIR {directory} is not a directory; pass run or sweep directories.")
    output = args.output or (
        args.dirs[0] / "figures"
        if len(args.dirs) == 1
        else Path(os.path.commonpath([d.resolve() for d in args.dirs])) / "figures"
    )

    every_run, figures = [], {}
    try:
        for directory in args.dirs:
            runs, sweep = find_runs(directory)
            swept = label_runs(runs, sweep)
            every_run += runs
            if sweep:
                name = directory.resolve().name
                print(f"Sweep {directory} ({len(runs)} jobs; swept: {', '.join(swept) or 'nothing'}):")
                print(sweep_table(runs, swept).to_string(index=False, float_format=lambda value: f"{value:.6g}"))
                figures[f"sweep_{name}.png"] = plot_sweep(runs, swept, name)
        figures = {"training_curves.png": plot_training_curves(every_run), **figures}
    except ValueError as error:
        parser.error(str(error))
    # Created only now, so a DIR that cannot be plotted gets no empty figures/ folder.
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        figure.savefig(output / name, dpi=DPI)
        written.append(output / name)
        print(output / name)
    return written


if __name__ == "__main__":
    main()
