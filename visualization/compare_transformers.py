"""Compare finished runs by size and accuracy: the transformer against the latent transformer.

    python visualization/compare_transformers.py logs/train/runs/<transformer run> logs/train/runs/<latent run>

Every run is rebuilt by train_hydra.load_run: its best checkpoint (the one its metrics.json
evaluated, loaded with weights_only=True) and its DataModule from the run's own .hydra/config.yaml.
Each is then evaluated by Lightning's validate and test loops, the same objective and greedy
decoding as in training, and the command prints one row per run: parameters, val loss, exact
match on val, test and the longer-operand test set, and test exact match per million parameters.
Runs must share their data config, or their accuracies would not be comparable.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from lightning_module import create_trainer
from train_hydra import ConfigError, TrainedRun, load_run, run_metrics

COLUMNS = {
    "parameters": "parameters",
    "val/loss": "val loss",
    "val/exact_match": "val exact match",
    "test/exact_match": "test exact match",
    "test/exact_match_longer": "longer-operand exact match",
    "exact_match_per_million_parameters": "test exact match per M params",
}


def evaluate_run(run: TrainedRun, accelerator: str = "cpu") -> dict[str, float]:
    """Val and test metrics of a rebuilt run, its parameter count and test exact match per million parameters."""
    trainer = create_trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    metrics = run_metrics(trainer)
    trainer.test(run.module, datamodule=run.datamodule, verbose=False)
    metrics |= run_metrics(trainer)
    metrics["parameters"] = run.module.num_parameters
    if "test/exact_match" in metrics:
        metrics["exact_match_per_million_parameters"] = metrics["test/exact_match"] / (metrics["parameters"] / 1e6)
    return metrics


def comparison_table(names: list[str], rows: list[dict[str, float]]) -> str:
    """A markdown table, one row per run; metrics a run does not have are shown as n/a."""

    def cell(row: dict[str, float], key: str) -> str:
        if key not in row:
            return "n/a"
        return f"{int(row[key]):,}" if key == "parameters" else f"{row[key]:.4f}"

    lines = ["| run | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(row, key) for key in COLUMNS) + " |" for name, row in zip(names, rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Print the comparison of the given run directories; returns one metrics dict per run."""
    parser = argparse.ArgumentParser(description="Compare finished runs (e.g. transformer vs latent_transformer).")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories made by train_hydra.py")
    parser.add_argument("--accelerator", default="cpu", help="where to evaluate: cpu (default), gpu, mps or auto")
    args = parser.parse_args(argv)

    runs = []
    for run_dir in args.runs:
        if not run_dir.is_dir():
            parser.error(f"run directory {run_dir} does not exist; pass directories made by train_hydra.py.")
        try:
            runs.append(load_run(run_dir))
        except ConfigError as error:
            parser.error(str(error))
        except (ValueError, yaml.YAMLError) as error:  # metrics.json or .hydra/config.yaml that does not parse
            parser.error(
                f"run directory {run_dir} holds a metrics.json or .hydra/config.yaml that cannot be parsed "
                f"({type(error).__name__}); pass a run made by train_hydra.py."
            )
    data_configs = [OmegaConf.to_container(run.config.data, resolve=True) for run in runs]
    for run_dir, data in zip(args.runs[1:], data_configs[1:]):
        differing = sorted(
            key for key in data.keys() | data_configs[0].keys() if data.get(key) != data_configs[0].get(key)
        )
        if differing:
            parser.error(
                f"runs {args.runs[0]} and {run_dir} were trained on different data (data.{differing[0]}: "
                f"{data_configs[0].get(differing[0])} vs {data.get(differing[0])}); compare runs of the same data."
            )

    lightning_log = logging.getLogger("pytorch_lightning")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # Lightning's device and tip messages would bury the table
    try:
        rows = [evaluate_run(run, args.accelerator) for run in runs]
    finally:
        lightning_log.setLevel(level)
    names = [f"{run.module.hparams.model_type} ({run_dir.name})" for run, run_dir in zip(runs, args.runs)]
    print(comparison_table(names, rows))
    return rows


if __name__ == "__main__":
    main()
