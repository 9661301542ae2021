"""The seam experiment's report from finished runs: results.md, results.json and figures.

    python visualization/seam_report.py logs/seam_vs_baselines/multiruns/<sweep> --output results/sweep
    python visualization/seam_report.py results/quick/runs --output results/quick

One analysis for both pipelines: `main.py` calls `write_report` on the run dirs it trained, and the
Hydra experiments (`experiment=seam_vs_baselines`, `seam_snr_sweep`, `seam_window_sweep`) call it
on their sweep dir through `SeamReportCallback` (`hydra.callbacks`). Runs are grouped by their data
setting (everything in `data` but the seed) and model variant; seeds are pooled, each seed's test
trajectory resampled separately. The statistics are `analysis.hypotheses` (docs/seam_experiment.md).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from analysis import hypotheses
from analysis.statistics import block_bootstrap
from data.antipodal import transition_mask
from models.hamilton_imm import HamiltonIMMReference, hamilton_imm_filter
from visualization.gate_slices import SliceDiagnostics, draw_slice_figures, gate_series

log = logging.getLogger(__name__)
REFERENCE = "hamilton_imm"
ORDER = ["lstm", "gru", "z2_equiv", "z2_seam_kstar", "z2_seam", "z2_seam_fixed", "z2_delta", "z2_delta_noseam"]
SETTING_KEYS = ("sigma_epsilon", "sigma_eta", "p_switch", "T", "window_radius", "history_length", "target_mode")


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every run dir (metrics.json next to .hydra/config.yaml) at or below the given paths, sorted."""
    found = set()
    for path in paths:
        for metrics in [Path(path) / "metrics.json", *Path(path).rglob("*/metrics.json")]:
            if metrics.is_file() and (metrics.parent / ".hydra" / "config.yaml").is_file():
                found.add(metrics.parent)
    return sorted(found)


def variant_name(run_dir: Path, cfg: DictConfig) -> str:
    """The model config a run used (z2_seam_kstar, ...): Hydra's recorded choice, else model.name."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        choice = OmegaConf.load(hydra_file).hydra.runtime.choices.get("model")
        if choice:
            return str(choice)
    return str(cfg.model.name)


def setting_of(cfg: DictConfig) -> dict[str, Any]:
    generator = cfg.data.generator
    values = {key: generator.get(key) for key in SETTING_KEYS if key in generator}
    values.update({key: cfg.data.get(key) for key in ("history_length", "target_mode")})
    return values


def setting_label(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key}={setting[key]}" for key in SETTING_KEYS if key in setting)


@dataclass
class SeedArrays:
    """One model on one seed's test split: step-level and target-level series (docs/seam_experiment.md)."""

    errors: np.ndarray  # per target, squared error averaged over x's dims
    gate: np.ndarray | None = None
    parity_energy: np.ndarray | None = None
    probe: np.ndarray | None = None  # P(d_t = -1) from a logistic probe of the state (gateless models)
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)  # per test step, for the figures


@dataclass
class SeedData:
    """What a seed's data and the filter give, shared by every model of a setting."""

    steps: np.ndarray  # test steps t (the last step a model has read)
    regime: np.ndarray  # r_t at those steps
    negative: np.ndarray  # d_t = r_{t-1} == -1
    observable: np.ndarray  # s+1 <= t <= s+w
    symmetric: np.ndarray  # s-w <= t <= s+w-1 (the paper's)
    filter_negative: np.ndarray  # P(d_t = -1 | x_{0:t}), the filter's regime posterior
    targets: np.ndarray  # target step of every test window
    filter_errors: np.ndarray
    zero_mse: float  # of predicting 0 on the same targets


def _windows(datamodule, split: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    dataset = datamodule.datasets[split]
    starts = dataset.starts.numpy()
    h = datamodule.history_length
    x = torch.stack([dataset.x[s : s + h] for s in starts])
    y = dataset.x[starts + h]
    return x, y, starts + h


def seed_data(datamodule) -> SeedData:
    """Test steps, signs, windows and the filter's errors and regime posterior for one generated sequence."""
    sequence, process = datamodule.sequence, datamodule.process
    start, stop = datamodule.bounds["test"]
    steps = np.arange(start + datamodule.history_length - 1, stop)
    regime = sequence.regime
    posterior = hamilton_imm_filter(sequence.x, sequence.A, sequence.C, process.sigma_epsilon, process.sigma_eta,
                                    process.p_switch).regime_probability
    x, y, targets = _windows(datamodule, "test")
    reference = HamiltonIMMReference(datamodule.input_dim, datamodule.output_dim, datamodule.reference_process())
    predictions = torch.cat([reference(chunk)[:, -1] for chunk in x.split(256)])
    w = process.window_radius
    return SeedData(
        steps=steps, regime=regime[steps], negative=regime[steps - 1] == -1,
        observable=transition_mask(regime, w, "observable")[steps],
        symmetric=transition_mask(regime, w, "symmetric")[steps],
        filter_negative=1.0 - posterior[steps], targets=targets,
        filter_errors=(predictions - y).pow(2).mean(-1).numpy(), zero_mse=float(y.pow(2).mean()))


def _last_step_diagnostics(module, x: torch.Tensor) -> dict[str, np.ndarray]:
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for chunk in x.split(256):
            _, diagnostics = module(chunk, return_diagnostics=True)
            for name, values in diagnostics.items():
                parts.setdefault(name, []).append(values[:, -1].float())
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


def model_arrays(run_dir: Path, data: SeedData) -> SeedArrays:
    """Per-target errors and per-step gate / parity energy / probe of a trained run on its test split."""
    from train_hydra import load_run

    run = load_run(run_dir)
    module, datamodule = run.module, run.datamodule
    datamodule.setup()
    x, y, _ = _windows(datamodule, "test")
    with torch.no_grad():
        predictions = torch.cat([module.scored_prediction(chunk) for chunk in x.split(256)])
    predictions = predictions[:, -1] if predictions.dim() == 3 else predictions
    arrays = SeedArrays(errors=(predictions - y).pow(2).mean(-1).numpy())
    # Step t reads the window ending at t, so the test windows end at data.steps[:-1]; the last step
    # has no target left in the split and is read through its own window.
    history = datamodule.history_length
    series = torch.as_tensor(datamodule.sequence.x, dtype=torch.float32)
    step_windows = torch.stack([series[t - history + 1 : t + 1] for t in data.steps])
    diagnostics = _last_step_diagnostics(module, step_windows)
    arrays.diagnostics = {name: values for name, values in diagnostics.items() if name != "state"}
    gate = diagnostics.get("gate")
    if gate is not None and gate.std() > 0:  # a constant gate (fixed, none) tracks nothing
        arrays.gate = gate
    arrays.parity_energy = diagnostics.get("parity_energy")
    if "state" in diagnostics:
        train_start, train_stop = datamodule.bounds["train"]
        train_steps = np.arange(train_start + history - 1, train_stop)
        train_windows = torch.stack([series[t - history + 1 : t + 1] for t in train_steps])
        train_state = _last_step_diagnostics(module, train_windows)["state"]
        probe = hypotheses.fit_logistic_probe(train_state, datamodule.sequence.regime[train_steps - 1] == -1)
        arrays.probe = probe(diagnostics["state"])
    return arrays


def _pooled(parts: list[np.ndarray | None]) -> np.ndarray | None:
    return None if any(p is None for p in parts) else np.concatenate(parts)


def analyse_model(seeds: list[SeedData], arrays: list[SeedArrays], resamples_seed: int = 0) -> dict:
    """H1-H4 and P1-P3 of one model in one setting, seeds pooled (resampled within each seed)."""
    groups = np.concatenate([np.full(len(d.steps), i) for i, d in enumerate(seeds)])
    target_groups = np.concatenate([np.full(len(d.targets), i) for i, d in enumerate(seeds)])
    negative = np.concatenate([d.negative for d in seeds])
    observable = np.concatenate([d.observable for d in seeds])
    symmetric = np.concatenate([d.symmetric for d in seeds])
    filter_negative = np.concatenate([d.filter_negative for d in seeds])
    gap = np.concatenate([a.errors - d.filter_errors for a, d in zip(arrays, seeds)])
    errors = np.concatenate([a.errors for a in arrays])
    filter_errors = np.concatenate([d.filter_errors for d in seeds])
    target_lookup = [np.searchsorted(d.steps, d.targets) for d in seeds]  # a target t is step t's flags
    target_observable = np.concatenate([d.observable[i] for d, i in zip(seeds, target_lookup)])
    target_symmetric = np.concatenate([d.symmetric[i] for d, i in zip(seeds, target_lookup)])

    def relative_gap(model: np.ndarray, reference: np.ndarray) -> float:
        return float(model.mean() / reference.mean() - 1.0)

    out: dict[str, Any] = {
        "mse": float(errors.mean()),
        "gap_to_filter": hypotheses.result_dict(block_bootstrap(
            relative_gap, [errors, filter_errors], groups=target_groups, seed=resamples_seed)),
        "H3": hypotheses.h3_boundary_gain(gap, target_observable, target_groups, seed=resamples_seed + 10),
    }
    score = _pooled([a.gate for a in arrays])
    out["h1_source"] = "gate"
    if score is None:
        score = _pooled([a.probe for a in arrays])
        out["h1_source"] = "probe of the state" if score is not None else "none (constant or no gate, no state)"
    if score is not None:
        out["H1"] = hypotheses.h1_regime_tracking(score, negative, filter_negative, groups, seed=resamples_seed + 20)
        aligned = score if out["H1"]["polarity"] == "high at d=-1" else -score
        out["H2"] = hypotheses.h2_switch_detection(aligned, negative, groups, seed=resamples_seed + 30)
    energy = _pooled([a.parity_energy for a in arrays])
    if energy is not None:
        out["H4"] = hypotheses.h4_parity_energy(energy, negative, observable, groups, seed=resamples_seed + 40)
    paper = hypotheses.paper_predictions(energy, _pooled([a.gate for a in arrays]), symmetric, gap, target_symmetric,
                                         groups, target_groups, seed=resamples_seed + 50)
    out.update(paper)
    return out


def filter_reference(seeds: list[SeedData]) -> dict:
    """The filter's own H1 and H2, the level every model's regime tracking is compared with."""
    groups = np.concatenate([np.full(len(d.steps), i) for i, d in enumerate(seeds)])
    negative = np.concatenate([d.negative for d in seeds])
    posterior = np.concatenate([d.filter_negative for d in seeds])
    return {"mse": float(np.concatenate([d.filter_errors for d in seeds]).mean()),
            "H1": hypotheses.h1_regime_tracking(posterior, negative, groups=groups),
            "H2": hypotheses.h2_switch_detection(posterior, negative, groups)}


def slug(setting: dict[str, Any]) -> str:
    """A short directory name of a setting: its noise level, context length and target mode."""
    return f"sigma_epsilon-{setting.get('sigma_epsilon')}_H-{setting.get('history_length')}_{setting.get('target_mode')}"


def draw_gate_figures(arrays: SeedArrays, data: SeedData, output_dir: Path, name: str, length: int = 400) -> None:
    """Gate heatmap, parity-energy and gate-statistics figures of the first `length` test steps of one seed."""
    if not gate_series(arrays.diagnostics):
        return
    window = slice(0, length)
    shown = SliceDiagnostics(steps=data.steps[window], regime=data.regime[window], transition=data.observable[window],
                             diagnostics={k: v[window] for k, v in arrays.diagnostics.items()}, history_length=0)
    for figure in draw_slice_figures(shown, output_dir, f"{name} (test split)").values():
        figure.clear()


def collect(run_dirs: list[Path], figures_dir: Path | None = None) -> dict[str, dict]:
    """{setting label: {"setting", "seeds", "filter", "models": {variant: analysis}, "per_seed_mse"}}."""
    from train_hydra import instantiate_from

    grouped: dict[str, dict] = {}
    for run_dir in run_dirs:
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        name = variant_name(run_dir, cfg)
        if name == REFERENCE:
            continue  # the filter is evaluated below, on every seed's data, for every setting
        setting = setting_of(cfg)
        entry = grouped.setdefault(setting_label(setting), {"setting": setting, "data": {}, "runs": {},
                                                            "epochs": int(cfg.trainer.max_epochs)})
        seed = int(cfg.seed)
        if seed not in entry["data"]:
            datamodule = instantiate_from(cfg, "data")
            datamodule.setup()
            entry["data"][seed] = seed_data(datamodule)
        entry["runs"].setdefault(name, {})[seed] = run_dir
    report = {}
    for label in sorted(grouped, key=lambda key: [str(grouped[key]["setting"].get(k)) for k in SETTING_KEYS]):
        entry = grouped[label]
        seeds = sorted(entry["data"])
        models = {}
        for name in sorted(entry["runs"], key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
            runs = entry["runs"][name]
            used = [s for s in seeds if s in runs]
            arrays = [model_arrays(runs[s], entry["data"][s]) for s in used]
            if figures_dir is not None:
                draw_gate_figures(arrays[0], entry["data"][used[0]], figures_dir / slug(entry["setting"]) / name, name)
            models[name] = analyse_model([entry["data"][s] for s in used], arrays)
            models[name]["seeds"] = used
            models[name]["per_seed_mse"] = [float(a.errors.mean()) for a in arrays]
        data = [entry["data"][s] for s in seeds]
        report[label] = {"setting": entry["setting"], "seeds": seeds, "epochs": entry["epochs"],
                         "filter": filter_reference(data),
                         "filter_per_seed_mse": [float(d.filter_errors.mean()) for d in data],
                         "zero_per_seed_mse": [d.zero_mse for d in data], "models": models}
    hypotheses.apply_holm({f"{label} / {name}": tests for label, entry in report.items()
                           for name, tests in entry["models"].items()})
    return report


def _ci(result: dict | None, digits: int = 3, percent: bool = False) -> str:
    if not result or not math.isfinite(result.get("estimate", math.nan)):
        return "n/a"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    return (f"{scale * result['estimate']:.{digits}g}{unit} [{scale * result['ci_low']:.{digits}g}, "
            f"{scale * result['ci_high']:.{digits}g}]")


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
    lines = ["# Seam experiment", "",
             ("Test split. Intervals: 95 % circular block bootstrap (block length in results.json), seeds "
             "resampled separately; p: Holm-adjusted over every model x hypothesis of this report, `*` = "
             "significant at 0.05. Definitions: docs/seam_experiment.md."), ""]
    for label, entry in report.items():
        filt = entry["filter"]
        lines += [f"## {label}", "", (f"Seeds {entry['seeds']}, max {entry['epochs']} epochs. Filter MSE "
                  f"{_mean_sd(entry['filter_per_seed_mse'])}, predicting 0 {_mean_sd(entry['zero_per_seed_mse'])} "
                  f"(mean ± s.d. over seeds). Filter regime tracking: AUROC {_ci(filt['H1']['auroc'])}; switch "
                  f"detection: delay {filt['H2']['operating_point']['mean_delay']:.2f} steps at "
                  f"{filt['H2']['operating_point']['false_alarms_per_1000']:.1f} false alarms / 1000 steps."), "",
                  ("| model | test MSE (seeds) | gap to filter | H1 AUROC vs d=-1 (source) | H1 r with filter posterior "
                  "| H1 p | H2 delay [CI] (false alarms / 1000) | H2 p | H3 gap transition - stable | H3 p "
                  "| H4 energy d=+1 / d=-1 / transition - stable | H4 p |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in entry["models"].items():
            h1, h2, h4 = m.get("H1"), m.get("H2"), m.get("H4")
            h1_cell = f"{_ci(h1['auroc'])} ({m['h1_source']})" if h1 else m["h1_source"]
            h2_cell = (f"{_ci(h2.get('mean_delay'))} ({h2['operating_point']['false_alarms_per_1000']:.1f})"
                       if h2 else "n/a")
            h4_cell = (f"{h4['mean_positive']:.3f} / {h4['mean_negative']:.3f} / {_ci(h4['transition_minus_stable'])}"
                       if h4 else "n/a")
            lines.append(f"| {name} | {_mean_sd(m['per_seed_mse'])} | {_ci(m['gap_to_filter'], percent=True)} | "
                         f"{h1_cell} | {_ci(h1.get('filter_correlation')) if h1 else 'n/a'} | {_p(h1)} | {h2_cell} | "
                         f"{_p(h2)} | {_ci(m['H3']['difference'])} | {_p(m['H3'])} | {h4_cell} | {_p(h4)} |")
        lines += ["", "The seed paper's predictions (its symmetric window s-w .. s+w-1, one-sided):", "",
                  ("| model | P1 parity energy in window - outside | P1 p | P2 gate AUROC vs window | P2 p "
                  "| P3 gap in window - outside | P3 p |"), "|---|---|---|---|---|---|---|"]
        for name, m in entry["models"].items():
            p1, p2, p3 = m.get("P1"), m.get("P2"), m.get("P3")
            lines.append(f"| {name} | {_ci(p1['difference']) if p1 else 'n/a'} | {_p(p1)} | "
                         f"{_ci(p2['auroc']) if p2 else 'n/a'} | {_p(p2)} | {_ci(p3['difference'])} | {_p(p3)} |")
        lines.append("")
    return "\n".join(lines)


def draw_sweep_figures(report: dict[str, dict], output_dir: Path) -> list[Path]:
    """Gap to the filter and H1 AUROC against the process noise, one line per model (needs >= 2 levels)."""
    from matplotlib.figure import Figure

    levels = sorted({entry["setting"].get("sigma_epsilon") for entry in report.values()})
    if len(levels) < 2:
        return []
    by_level = {entry["setting"].get("sigma_epsilon"): entry for entry in report.values()}
    models = sorted({name for entry in report.values() for name in entry["models"]},
                    key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    paths = []
    panels = [("gap_to_filter", "test MSE gap to the filter (%)", "snr_gap_to_filter.png", 100.0),
              ("H1", "H1: AUROC of the gate (or probe) against d = -1", "snr_h1_auroc.png", 1.0)]
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
