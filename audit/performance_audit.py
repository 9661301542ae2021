"""The full training-health audit and its command line: one model, one data loader, every audit.

    python audit/performance_audit.py model=z2_seam data=antipodal
    python audit/performance_audit.py model=lstm data.batch_size=256 --output /tmp/audit --n-batches 50

Each audit lives in its own module and keeps its findings in `.report`, which prints as text, turns
into JSON-ready dicts and lists its own recommendations: gradient flow (audit/gradient_flow.py),
initialisation and gate saturation (audit/initialization.py, with the gate recorder in
audit/gate_recorder.py), data loading (audit/dataloader.py) and memory (audit/memory.py).
`run_full_audit` runs them all on one model and data loader. The command line composes the same
Hydra config as train_hydra.py (same overrides, same one-sentence errors) and audits the freshly
built model on its training data, without training it. The auditors are re-exported here, the
import path the seed snippets use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.dataloader import DataLoaderAuditor, DataLoaderReport
from audit.gate_recorder import fused_rnn_gate_preactivations
from audit.gradient_flow import (
    EXPLODING_GRAD_NORM,
    VANISHING_GRAD_NORM,
    GradientFlowAuditor,
    GradientFlowReport,
    check_gradient_thresholds,
)
from audit.initialization import InitializationAuditor, InitializationReport
from audit.memory import MemoryProfiler, MemoryReport
from training.checkpoint_io import atomic_write_text

__all__ = [
    "EXPLODING_GRAD_NORM",
    "VANISHING_GRAD_NORM",
    "AuditReport",
    "DataLoaderAuditor",
    "DataLoaderReport",
    "GradientFlowAuditor",
    "GradientFlowReport",
    "InitializationAuditor",
    "InitializationReport",
    "MemoryProfiler",
    "MemoryReport",
    "batch_to_device",
    "check_gradient_thresholds",
    "fused_rnn_gate_preactivations",
    "main",
    "prediction_loss",
    "run_full_audit",
    "write_report",
]

TIMED_PASSES = 3  # forward+backward passes timed by run_full_audit, after one warm-up pass


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity; they become null so that every JSON reader accepts the report."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


@dataclass
class AuditReport:
    """The reports of one audit; any of them may be absent (e.g. no data loader benchmark mid-training)."""

    initialization: InitializationReport | None = None
    gradient_flow: GradientFlowReport | None = None
    dataloader: DataLoaderReport | None = None
    memory: MemoryReport | None = None

    def _parts(self) -> list[Any]:
        parts = (self.initialization, self.gradient_flow, self.dataloader, self.memory)
        return [part for part in parts if part is not None]

    def recommendations(self) -> list[str]:
        return [advice for part in self._parts() for advice in part.recommendations()]

    def scalars(self) -> dict[str, float]:
        """Flat numbers for a logger (TensorBoard groups them under `audit/`)."""
        return {name: value for part in self._parts() for name, value in part.scalars().items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every report field, the recommendations, non-finite numbers as null."""
        content = {
            name: asdict(part) if part is not None else None
            for name, part in (
                ("initialization", self.initialization),
                ("gradient_flow", self.gradient_flow),
                ("dataloader", self.dataloader),
                ("memory", self.memory),
            )
        }
        content["recommendations"] = self.recommendations()
        return json_safe(content)

    def __str__(self) -> str:
        advice = self.recommendations()
        summary = (
            "Recommendations:\n" + "\n".join(f"  - {line}" for line in advice)
            if advice
            else "Recommendations: none; nothing unhealthy was found."
        )
        return "\n\n".join([str(part) for part in self._parts()] + [summary])


def batch_to_device(batch: Any, device: torch.device) -> Any:
    """A tensor or the tensors of a dict batch moved to `device`."""
    if isinstance(batch, dict):
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    return batch.to(device)


def prediction_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: the task objective's (MSE, cross-entropy, ...) for a SeamGatedLightningModule,
    else the MSE of a bare model's prediction of `batch["y"]` (all steps, or the last one when y has no
    time axis)."""
    objective = getattr(model, "objective", None)
    if objective is not None:
        progress = model.training_progress()  # NaN outside a fit with a step limit: no scheduled sampling then
        return objective.training_loss(model.scored_prediction, batch, progress if math.isfinite(progress) else 0.0)[0]
    prediction = model(batch["x"]).float()
    if prediction.dim() == batch["y"].dim() + 1:
        prediction = prediction[:, -1]  # target_mode "last": only the step after the window is scored
    return nn.functional.mse_loss(prediction, batch["y"].float())


def run_full_audit(
    model: nn.Module,
    dataloader: Iterable,
    device: torch.device | str,
    sample_batch: Any = None,
    n_batches: int = 100,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = prediction_loss,
    vanishing_threshold: float = VANISHING_GRAD_NORM,
    exploding_threshold: float = EXPLODING_GRAD_NORM,
    verbose: bool = True,
) -> AuditReport:
    """Audit initialisation, gradient flow, data loading and memory of `model` on `dataloader`.

    The model moves to `device`; `sample_batch` (default: the loader's first batch; a pair (x, y) is
    the batch {"x": x, "y": y}) feeds the saturation check and forward+backward passes through
    `loss_fn`, whose gradients are audited and then cleared. Their median time is the step the data loader verdict compares against.
    """
    device = torch.device(device)
    model.to(device)
    if sample_batch is None:
        sample_batch = next(iter(dataloader))
    if isinstance(sample_batch, (tuple, list)):  # the seed's sample_batch=(x, y)
        if len(sample_batch) != 2:
            raise ValueError(
                f"sample_batch has {len(sample_batch)} entries; pass (x, y), a dict with 'x' and 'y', or a tensor."
            )
        sample_batch = {"x": sample_batch[0], "y": sample_batch[1]}
    sample_batch = batch_to_device(sample_batch, device)

    initialization = InitializationAuditor(model, sample_batch).check_initialization()
    memory = MemoryProfiler(device)
    gradient_auditor = GradientFlowAuditor(model, vanishing_threshold, exploding_threshold)
    # A model with nothing to train (e.g. a reference filter) has no gradients to audit; it is only run.
    trainable = any(parameter.requires_grad for parameter in model.parameters())
    gradients, step_times = None, []
    with memory.track(f"{1 + TIMED_PASSES} x forward{' + backward' if trainable else ''} on the sample batch"):
        for _ in range(1 + TIMED_PASSES):
            started = time.perf_counter()
            loss = loss_fn(model, sample_batch)
            if trainable:
                gradients = gradient_auditor.check_gradient_flow(loss)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    # The first pass pays one-off allocation and dispatch costs; the median of the rest is a step.
    step_time_s = float(np.median(step_times[1:]))
    with memory.track(f"{n_batches} batches of the data loader"):
        data = DataLoaderAuditor().benchmark_dataloader(dataloader, n_batches=n_batches, step_time_s=step_time_s)
    report = AuditReport(initialization, gradients, data, memory.report)
    if verbose:
        print(report)
    return report


def write_report(reports: list[tuple[str, AuditReport]], directory: Path) -> None:
    """Write report.json and report.txt of one or more labelled audits into `directory`, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    content = {
        "json": json.dumps({"audits": [{"when": label, **report.to_dict()} for label, report in reports]}, indent=2),
        "txt": "\n\n".join(f"=== Audit at {label} ===\n{report}" for label, report in reports) + "\n",
    }
    for suffix, text in content.items():
        atomic_write_text(directory / f"report.{suffix}", text)


def main(argv: list[str] | None = None) -> AuditReport:
    """Compose the config from Hydra overrides, build model and data, run the full audit, write the report."""
    # The command line needs the training entry point; the auditors above do not.
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from train_hydra import (
        CONFIG_DIR,
        ConfigError,
        build_module,
        compose_config,
        config_without_hydra,
        instantiate_from,
    )
    from training.command_line import check_group_choices
    from training.trainer import resolve_accelerator

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="python audit/performance_audit.py [overrides ...] [--output DIR] [--n-batches N]",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, as for train_hydra.py (model=lstm data.batch_size=128)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where report.json, report.txt and config.yaml go (default: logs/audit/runs/<timestamp>)",
    )
    parser.add_argument("--n-batches", type=int, default=100, help="data loader batches to time (default 100)")
    args = parser.parse_args(argv)
    if args.n_batches < 1:
        parser.error(f"--n-batches {args.n_batches} must be >= 1.")
    check_group_choices(args.overrides, CONFIG_DIR)
    output = args.output or Path("logs") / "audit" / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    try:
        cfg = compose_config(args.overrides, output)
        # Seeded as train() seeds, so the audited weights are those a training run would start from.
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate_from(cfg, "data")
        datamodule.setup("fit")
        module = build_module(cfg, datamodule)
    except ConfigError as error:
        sys.exit(f"Invalid config: {error}")
    device = torch.device(resolve_accelerator(cfg.trainer.accelerator))
    print(f"Auditing model={cfg.model.name} on {type(datamodule).__name__} ({device})\n")
    report = run_full_audit(module, datamodule.train_dataloader(), device, n_batches=args.n_batches)
    write_report([("initialisation (untrained model)", report)], output)
    OmegaConf.save(config_without_hydra(cfg), output / "config.yaml")
    print(f"\nReport written to {output}/report.json and {output}/report.txt")
    return report


if __name__ == "__main__":
    main()
