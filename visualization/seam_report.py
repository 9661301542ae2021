"""The seam experiment's report from finished runs: results.md, results.json and figures.

    python visualization/seam_report.py logs/seam_vs_baselines/multiruns/<sweep> --output results/sweep
    python visualization/seam_report.py results/quick/runs --output results/quick

One analysis for both pipelines: `main.py` calls `write_report` on the run dirs it trained, and the
Hydra experiments (`experiment=seam_vs_baselines`, `seam_snr_sweep`, `seam_window_sweep`) call it
on their sweep dir through `SeamReportCallback` (`hydra.callbacks`). Runs are grouped by their data
setting and model variant by visualization/seam_runs.py, which computes the statistics
(`analysis.hypotheses`, docs/seam_experiment.md); this module writes them out.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from visualization.seam_runs import ORDER, collect, find_run_dirs

log = logging.getLogger(__name__)


def _ci(result: dict | None, digits: int = 3, percent: bool = False) -> str:
    if not result or not math.isfinite(result.get("estimate", math.nan)):
        return "n/a"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    return (
        f"{scale * result['estimate']:.{digits}g}{unit} [{scale * result['ci_low']:.{digits}g}, "
        f"{scale * result['ci_high']:.{digits}g}]"
    )


def _p(test: dict | None) -> str:
    if not test or not math.isfinite(test.get("p_holm", math.nan)):
        return "n/a"
    return f"{test['p_holm']:.3g}{' *' if test.get('significant') else ''}"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4g} ± {sd:.2g}"


def results_markdown(report: dict[str, dict]) -> str:
    """results.md: per setting, the MSE table, H1-H4 and the paper's P1-P3 (intervals: 95 % block bootstrap)."""
    lines = [
        "# Seam experiment",
        "",
        (
            "Test split. Intervals: 95 % circular block bootstrap (block length in results.json), seeds "
            "resampled separately; p: Holm-adjusted over every model x hypothesis of this report, `*` = "
            "significant at 0.05. Definitions: docs/seam_experiment.md."
        ),
        "",
    ]
    for label, entry in report.items():
        filt = entry["filter"]
        lines += [
            f"## {label}",
            "",
            (
                f"Seeds {entry['seeds']}, max {entry['epochs']} epochs. Filter MSE "
                f"{_mean_sd(entry['filter_per_seed_mse'])}, predicting 0 {_mean_sd(entry['zero_per_seed_mse'])} "
                f"(mean ± s.d. over seeds). Filter regime tracking: AUROC {_ci(filt['H1']['auroc'])}; switch "
                f"detection: delay {filt['H2']['operating_point']['mean_delay']:.2f} steps at "
                f"{filt['H2']['operating_point']['false_alarms_per_1000']:.1f} false alarms / 1000 steps."
            ),
            "",
            (
                "| model | test MSE (seeds) | gap to filter | H1 AUROC vs d=-1 (source) | H1 r with filter posterior "
                "| H1 p | H2 delay [CI] (false alarms / 1000) | H2 p | H3 gap transition - stable | H3 p "
                "| H4 energy d=+1 / d=-1 / transition - stable | H4 p |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in entry["models"].items():
            h1, h2, h4 = m.get("H1"), m.get("H2"), m.get("H4")
            h1_cell = f"{_ci(h1['auroc'])} ({m['h1_source']})" if h1 else m["h1_source"]
            h2_cell = (
                f"{_ci(h2.get('mean_delay'))} ({h2['operating_point']['false_alarms_per_1000']:.1f})" if h2 else "n/a"
            )
            h4_cell = (
                f"{h4['mean_positive']:.3f} / {h4['mean_negative']:.3f} / {_ci(h4['transition_minus_stable'])}"
                if h4
                else "n/a"
            )
            lines.append(
                f"| {name} | {_mean_sd(m['per_seed_mse'])} | {_ci(m['gap_to_filter'], percent=True)} | "
                f"{h1_cell} | {_ci(h1.get('filter_correlation')) if h1 else 'n/a'} | {_p(h1)} | {h2_cell} | "
                f"{_p(h2)} | {_ci(m['H3']['difference'])} | {_p(m['H3'])} | {h4_cell} | {_p(h4)} |"
            )
        lines += [
            "",
            "The seed paper's predictions (its symmetric window s-w .. s+w-1, one-sided):",
            "",
            (
                "| model | P1 parity energy in window - outside | P1 p | P2 gate AUROC vs window | P2 p "
                "| P3 gap in window - outside | P3 p |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for name, m in entry["models"].items():
            p1, p2, p3 = m.get("P1"), m.get("P2"), m.get("P3")
            lines.append(
                f"| {name} | {_ci(p1['difference']) if p1 else 'n/a'} | {_p(p1)} | "
                f"{_ci(p2['auroc']) if p2 else 'n/a'} | {_p(p2)} | {_ci(p3['difference'])} | {_p(p3)} |"
            )
        lines.append("")
    return "\n".join(lines)


def draw_sweep_figures(report: dict[str, dict], output_dir: Path) -> list[Path]:
    """Gap to the filter and H1 AUROC against the process noise, one line per model (needs >= 2 levels)."""
    from matplotlib.figure import Figure

    levels = sorted({entry["setting"].get("sigma_epsilon") for entry in report.values()})
    if len(levels) < 2:
        return []
    by_level = {entry["setting"].get("sigma_epsilon"): entry for entry in report.values()}
    models = sorted(
        {name for entry in report.values() for name in entry["models"]},
        key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n),
    )
    paths = []
    panels = [
        ("gap_to_filter", "test MSE gap to the filter (%)", "snr_gap_to_filter.png", 100.0),
        ("H1", "H1: AUROC of the gate (or probe) against d = -1", "snr_h1_auroc.png", 1.0),
    ]
    output_dir.mkdir(parents=True, exist_ok=True)
    for key, ylabel, filename, scale in panels:
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        for name in models:
            xs, ys, lows, highs = [], [], [], []
            for level in levels:
                model = by_level[level]["models"].get(name, {})
                result = model.get(key, {})
                result = result.get("auroc") if key == "H1" and result else result
                if result and math.isfinite(result.get("estimate", math.nan)):
                    xs.append(level)
                    ys.append(scale * result["estimate"])
                    lows.append(scale * (result["estimate"] - result["ci_low"]))
                    highs.append(scale * (result["ci_high"] - result["estimate"]))
            if xs:
                ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=name)
        if key == "H1":
            filt = [by_level[level]["filter"]["H1"]["auroc"]["estimate"] for level in levels]
            ax.plot(levels, filt, color="black", linestyle=":", marker="s", label="filter (regime posterior)")
            ax.axhline(0.5, color="0.5", linewidth=0.8)
        else:
            ax.axhline(0.0, color="black", linestyle=":", linewidth=1.2, label="filter")
        ax.set_xscale("log")
        ax.set_xlabel(r"process noise $\sigma_\epsilon$ (observation noise fixed)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{ylabel.split(':')[0]} vs SNR (95 % block-bootstrap intervals)")
        fig.savefig(output_dir / filename, dpi=150)
        paths.append(output_dir / filename)
    return paths


def write_report(paths: list[Path], output_dir: Path) -> dict[str, dict]:
    """Analyse every run at or below `paths`; write results.md, results.json and figures into `output_dir`."""
    run_dirs = find_run_dirs([Path(p) for p in paths])
    if not run_dirs:
        raise ValueError(f"no finished runs (metrics.json with .hydra/config.yaml) under {', '.join(map(str, paths))}.")
    report = collect(run_dirs, Path(output_dir) / "figures")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report, indent=2, default=float))
    (output_dir / "results.md").write_text(results_markdown(report))
    draw_sweep_figures(report, output_dir / "figures")
    return report


class SeamReportCallback(Callback):
    """Hydra callback (`hydra.callbacks.seam_report`): the report of the sweep dir when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report([sweep_dir], sweep_dir)
            log.info(f"seam report: {sweep_dir / 'results.md'}")
        except Exception:  # the jobs' results stay; a failed report must not hide them
            log.exception("seam report failed")


def main(argv: list[str] | None = None) -> Path:
    import argparse

    parser = argparse.ArgumentParser(description="The seam experiment's report of finished runs.")
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs or dirs above them (a sweep dir)")
    parser.add_argument("--output", type=Path, required=True, help="where results.md, results.json, figures/ go")
    args = parser.parse_args(argv)
    write_report(args.paths, args.output)
    print((args.output / "results.md").read_text())
    return args.output / "results.md"


if __name__ == "__main__":
    main()
