"""The seam experiment's runs, analysed: found, grouped by data setting and model variant, and
turned into per-model H1-H4 / P1-P3 results (the statistics are `analysis.hypotheses`).

Runs are grouped by their data setting (everything in `data` but the seed) and model variant; seeds
are pooled, each seed's test trajectory resampled separately (docs/seam_experiment.md).
visualization/seam_report.py writes the result as results.md, results.json and figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from analysis import hypotheses
from analysis.statistics import block_bootstrap
from data.antipodal import transition_mask
from models.hamilton_imm import HamiltonIMMReference, hamilton_imm_filter
from visualization.gate_slices import SliceDiagnostics, draw_slice_figures, gate_series

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
    posterior = hamilton_imm_filter(
        sequence.x, sequence.A, sequence.C, process.sigma_epsilon, process.sigma_eta, process.p_switch
    ).regime_probability
    x, y, targets = _windows(datamodule, "test")
    reference = HamiltonIMMReference(datamodule.input_dim, datamodule.output_dim, datamodule.reference_process())
    predictions = torch.cat([reference(chunk)[:, -1] for chunk in x.split(256)])
    w = process.window_radius
    return SeedData(
        steps=steps,
        regime=regime[steps],
        negative=regime[steps - 1] == -1,
        observable=transition_mask(regime, w, "observable")[steps],
        symmetric=transition_mask(regime, w, "symmetric")[steps],
        filter_negative=1.0 - posterior[steps],
        targets=targets,
        filter_errors=(predictions - y).pow(2).mean(-1).numpy(),
        zero_mse=float(y.pow(2).mean()),
    )


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
        "gap_to_filter": hypotheses.result_dict(
            block_bootstrap(relative_gap, [errors, filter_errors], groups=target_groups, seed=resamples_seed)
        ),
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
    paper = hypotheses.paper_predictions(
        energy,
        _pooled([a.gate for a in arrays]),
        symmetric,
        gap,
        target_symmetric,
        groups,
        target_groups,
        seed=resamples_seed + 50,
    )
    out.update(paper)
    return out


def filter_reference(seeds: list[SeedData]) -> dict:
    """The filter's own H1 and H2, the level every model's regime tracking is compared with."""
    groups = np.concatenate([np.full(len(d.steps), i) for i, d in enumerate(seeds)])
    negative = np.concatenate([d.negative for d in seeds])
    posterior = np.concatenate([d.filter_negative for d in seeds])
    return {
        "mse": float(np.concatenate([d.filter_errors for d in seeds]).mean()),
        "H1": hypotheses.h1_regime_tracking(posterior, negative, groups=groups),
        "H2": hypotheses.h2_switch_detection(posterior, negative, groups),
    }


def slug(setting: dict[str, Any]) -> str:
    """A short directory name of a setting: its noise level, context length and target mode."""
    return (
        f"sigma_epsilon-{setting.get('sigma_epsilon')}_H-{setting.get('history_length')}_{setting.get('target_mode')}"
    )


def draw_gate_figures(arrays: SeedArrays, data: SeedData, output_dir: Path, name: str, length: int = 400) -> None:
    """Gate heatmap, parity-energy and gate-statistics figures of the first `length` test steps of one seed."""
    if not gate_series(arrays.diagnostics):
        return
    window = slice(0, length)
    shown = SliceDiagnostics(
        steps=data.steps[window],
        regime=data.regime[window],
        transition=data.observable[window],
        diagnostics={k: v[window] for k, v in arrays.diagnostics.items()},
        history_length=0,
    )
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
        entry = grouped.setdefault(
            setting_label(setting), {"setting": setting, "data": {}, "runs": {}, "epochs": int(cfg.trainer.max_epochs)}
        )
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
        report[label] = {
            "setting": entry["setting"],
            "seeds": seeds,
            "epochs": entry["epochs"],
            "filter": filter_reference(data),
            "filter_per_seed_mse": [float(d.filter_errors.mean()) for d in data],
            "zero_per_seed_mse": [d.zero_mse for d in data],
            "models": models,
        }
    hypotheses.apply_holm(
        {f"{label} / {name}": tests for label, entry in report.items() for name, tests in entry["models"].items()}
    )
    return report
