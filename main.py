"""The seam experiment end to end, without Hydra overrides.

    python main.py --seed 42 --epochs 50              # the full table: every model, 3 seeds
    python main.py --quick                            # the same on a budget (<= 10 min on 2 CPU cores)
    python main.py --models lstm z2_seam --seeds 0 1 --output-dir results/small

Trains lstm, gru, z2_equiv, z2_seam (each gate type) and z2_delta over several seeds through
`train_hydra.train` (the one training path), evaluates the Hamilton/IMM reference filter on the same
test windows, and tests the three predictions of the seam hypothesis on the test split:
  1. parity energy is higher at transition steps (one-sided Welch test, Cohen's d);
  2. the seam gate is higher at transition steps (Welch, Cohen's d, AUROC against the switch steps);
  3. the improvement over Hamilton/IMM is larger at transition targets than at stable ones
     (bootstrap of the difference of mean improvements, 1000 resamples).
It also reports the correlation of each model's gate with the filter's switch posterior, and writes
results.md, results.json and figures into --output-dir.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from lightning_module import SeamGatedLightningModule
from models.hamilton_imm import hamilton_imm_filter
from train_hydra import build_module, compose_config, instantiate_from, train
from visualization.gate_heatmaps import (
    SliceDiagnostics,
    collect_slice_diagnostics,
    draw_slice_figures,
    gate_transition_statistics,
)

# Model configs (configs/model/*.yaml); z2_seam is the learned gate, the _kstar/_fixed variants the others.
VARIANTS = ["lstm", "gru", "z2_equiv", "z2_seam_kstar", "z2_seam", "z2_seam_fixed", "z2_delta", "hamilton_imm"]
REFERENCE = "hamilton_imm"
QUICK_OVERRIDES = ["data.generator.T=6000"]
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class SeedResult:
    """What one trained (or reference) model gives on the test split for one seed."""

    metrics: dict[str, float]
    squared_errors: np.ndarray  # per test target, averaged over observation dims
    target_transition: np.ndarray  # per test target
    slice_path: Path | None  # diagnostics of the contiguous test slice (models with gates)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42, help="first seed; --seeds defaults to seed, seed+1, seed+2")
    parser.add_argument("--epochs", type=int, default=50, help="max epochs per model (early stopping may end sooner)")
    parser.add_argument("--quick", action="store_true", help="2 seeds and 4 epochs: the whole pipeline in <= 10 min")
    parser.add_argument("--models", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="models to run")
    parser.add_argument("--seeds", nargs="+", type=int, help="explicit seeds (overrides --seed)")
    parser.add_argument("--output-dir", type=Path, default=Path("results"), help="where results and figures go")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="extra Hydra overrides for every run, e.g. data.generator.sigma_epsilon=0.3")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 3)
        args.overrides = [*QUICK_OVERRIDES, *args.overrides]
    args.seeds = args.seeds or [args.seed + i for i in range(2 if args.quick else 3)]
    if args.epochs < 1:
        parser.error(f"--epochs={args.epochs} must be >= 1.")
    if REFERENCE not in args.models:
        args.models.append(REFERENCE)  # prediction 3 and every comparison need the reference
    return args


def run_variant(name: str, seed: int, args: argparse.Namespace):
    """Train (or, for the reference, only evaluate) one model for one seed, then score its test split."""
    run_dir = args.output_dir / "runs" / name / f"seed_{seed}"
    cfg = compose_config([f"model={name}", f"seed={seed}", f"trainer.max_epochs={args.epochs}",
                          "trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null", *args.overrides],
                         run_dir)
    record = train(cfg)
    datamodule = instantiate_from(cfg, "data")
    datamodule.setup()
    module = load_evaluated_module(cfg, record, datamodule)
    errors, transition = test_target_errors(module, datamodule)
    slice_path = None
    if name != REFERENCE and module.num_parameters > 0:
        data = collect_slice_diagnostics(module, datamodule, length=10**9, split="test")
        if data.diagnostics:
            slice_path = run_dir / "test_slice.pt"
            torch.save(data.to_dict(), slice_path)
    return SeedResult(record["metrics"], errors, transition, slice_path), datamodule


def load_evaluated_module(cfg, record: dict, datamodule) -> SeamGatedLightningModule:
    """The weights whose metrics the run reported."""
    if record["evaluated_checkpoint"]:
        return SeamGatedLightningModule.load_from_checkpoint(record["evaluated_checkpoint"], weights_only=True)
    return build_module(cfg, datamodule)


def test_target_errors(module: SeamGatedLightningModule, datamodule) -> tuple[np.ndarray, np.ndarray]:
    """Squared error of every test target (mean over obs dims) and whether it is a transition target."""
    errors, flags = [], []
    module.eval()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            errors.append((module.scored_prediction(batch["x"]) - batch["y"]).pow(2).mean(-1).reshape(-1))
            flags.append(batch["transition"].reshape(-1))
    return torch.cat(errors).numpy(), torch.cat(flags).numpy()


def bootstrap_transition_gain(improvement: np.ndarray, transition: np.ndarray, seed: int) -> dict[str, float]:
    """Mean improvement at transition targets minus at stable ones, with a one-sided bootstrap p-value."""
    rng = np.random.default_rng(seed)
    inside, outside = improvement[transition], improvement[~transition]
    observed = inside.mean() - outside.mean()
    resampled = np.array([rng.choice(inside, len(inside)).mean() - rng.choice(outside, len(outside)).mean()
                          for _ in range(BOOTSTRAP_RESAMPLES)])
    return {"difference": float(observed), "p_value": float((resampled <= 0).mean()),
            "ci_low": float(np.quantile(resampled, 0.025)), "ci_high": float(np.quantile(resampled, 0.975))}


def seam_statistics(result: SeedResult, reference: SeedResult, imm_switch: np.ndarray, seed: int) -> dict:
    """Predictions 1-3 and the gate/IMM correlation for one model and seed."""
    out = {"prediction_3": bootstrap_transition_gain(reference.squared_errors - result.squared_errors,
                                                     result.target_transition.astype(bool), seed)}
    if result.slice_path is None:
        return out
    data = torch.load(result.slice_path, weights_only=True)
    transition = data["transition"].numpy().astype(bool)
    diagnostics = {name: values.numpy() for name, values in data["diagnostics"].items()}
    if "parity_energy" in diagnostics:
        out["prediction_1"] = asdict(gate_transition_statistics(diagnostics["parity_energy"], transition))
    gate = diagnostics.get("gate")
    if gate is not None and gate.std() == 0:
        out["gate"] = f"constant ({gate[0]:g}): no gate statistics"  # z2_equiv, z2_seam_fixed
    elif gate is not None:
        out["prediction_2"] = asdict(gate_transition_statistics(gate, transition))
        # The gate at step t has seen x_t; the filter's posterior of a switch at t-1 uses x_{0:t}.
        posterior = imm_switch[data["steps"].numpy()[1:] - 1]
        out["gate_imm_correlation"] = float(stats.pearsonr(gate[1:], posterior).statistic)
    return out


def full_sequence_switch_posterior(datamodule) -> np.ndarray:
    """The filter's switch posterior over the whole trajectory (it sees the whole past)."""
    sequence, process = datamodule.sequence, datamodule.process
    return hamilton_imm_filter(sequence.x, sequence.A, sequence.C, process.sigma_epsilon, process.sigma_eta,
                               process.p_switch).switch_probability


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    return f"{np.mean(values):.6f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.6f}"


def results_markdown(args: argparse.Namespace, table: dict, predictions: dict) -> str:
    lines = [f"# Seam experiment: {'--quick' if args.quick else 'full'} preset, seeds {args.seeds}, "
             f"max {args.epochs} epochs, overrides {args.overrides or 'none'}", "",
             "Test-split MSE, mean ± std over seeds (`hamilton_imm`: the reference filter with the true "
             "parameters, on the same windows).", "",
             "| model | MSE | MSE stable | MSE transition | MSE of predicting 0 |", "|---|---|---|---|---|"]
    for name, per_seed in table.items():
        cells = [mean_std([m.get(f"test/{key}") for m in per_seed]) for key in ("mse", "mse_stable", "mse_transition", "mse_zero")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Predictions on the test split (per seed; p from one-sided tests, significant at 0.05).", "",
              "| model | P1 parity energy: d / p | P2 gate: d / AUROC / p | P3 gain at transitions vs IMM: diff / p | "
              "gate vs IMM switch posterior: r |", "|---|---|---|---|---|"]
    for name, per_seed in predictions.items():
        def cell(key: str, fields: tuple[str, ...]) -> str:
            found = [s[key] for s in per_seed if key in s]
            return "; ".join(" / ".join(f"{entry[f]:.3g}" for f in fields) for entry in found) or "n/a"
        correlation = "; ".join(f"{s['gate_imm_correlation']:.3f}" for s in per_seed if "gate_imm_correlation" in s)
        gate_cell = cell("prediction_2", ("cohens_d", "auroc", "welch_p"))
        if gate_cell == "n/a" and "gate" in per_seed[0]:
            gate_cell = per_seed[0]["gate"]
        lines.append(f"| {name} | {cell('prediction_1', ('cohens_d', 'welch_p'))} | {gate_cell} | "
                     f"{cell('prediction_3', ('difference', 'p_value'))} | {correlation or 'n/a'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    table: dict[str, list[dict]] = {name: [] for name in args.models}
    predictions: dict[str, list[dict]] = {name: [] for name in args.models if name != REFERENCE}
    for seed in args.seeds:
        reference, datamodule = run_variant(REFERENCE, seed, args)
        table[REFERENCE].append(reference.metrics)
        imm_switch = full_sequence_switch_posterior(datamodule)
        for name in predictions:
            result, _ = run_variant(name, seed, args)
            table[name].append(result.metrics)
            predictions[name].append(seam_statistics(result, reference, imm_switch, seed))
            if seed == args.seeds[0] and result.slice_path is not None:
                draw_figures(result.slice_path, args.output_dir / "figures" / name, name)
    results = {"preset": "quick" if args.quick else "full", "seeds": args.seeds, "epochs": args.epochs,
               "overrides": args.overrides,
               "test_metrics": table, "predictions": predictions}
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (args.output_dir / "results.md").write_text(results_markdown(args, table, predictions))
    print((args.output_dir / "results.md").read_text())
    return results


def draw_figures(slice_path: Path, output_dir: Path, name: str) -> None:
    """Heatmap, parity-energy and gate-statistics figures of the first 400 test steps."""
    import matplotlib.pyplot as plt

    data = torch.load(slice_path, weights_only=True)
    window = slice(0, 400)
    diagnostics = SliceDiagnostics(
        steps=data["steps"].numpy()[window], regime=data["regime"].numpy()[window],
        transition=data["transition"].numpy()[window].astype(bool), history_length=data["history_length"],
        diagnostics={key: values.numpy()[window] for key, values in data["diagnostics"].items()})
    output_dir.mkdir(parents=True, exist_ok=True)
    for figure in draw_slice_figures(diagnostics, output_dir, name).values():
        plt.close(figure)


if __name__ == "__main__":
    main()
