"""The objective of each task: its training loss and its evaluation metrics.

An objective never sees the LightningModule. It is handed `predict`, the model's scored output
for an input (float32, aligned with batch["y"]), the batch and, for training, the share of
training done; it returns the loss and any scalars worth logging, and SeamGatedLightningModule
does the logging.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from data.datamodule import IGNORE_INDEX
from models.contract import OptionError
from training.decoding import SAMPLING_SCHEDULES, greedy_decode, mix_in_predictions, scheduled_sampling_rate
from training.metrics import ClassificationMetrics, RegressionMetrics, Seq2SeqMetrics

STAGES = ("val", "test")
Batch = dict[str, torch.Tensor]
Predict = Callable[[torch.Tensor], torch.Tensor]  # input x -> scored prediction, aligned with batch["y"]


class RegressionObjective(nn.Module):
    """MSE training loss; MSE overall, at transitions, at stable steps and of predicting zero."""

    def __init__(self, output_dim: int, **other_task_options: Any) -> None:
        super().__init__()
        reject_options_of_other_tasks("regression", other_task_options)
        self.stage_metrics = nn.ModuleDict({stage: RegressionMetrics() for stage in STAGES})

    def training_loss(self, predict: Predict, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        return nn.functional.mse_loss(predict(batch["x"]), batch["y"]), {}

    def update(self, stage: str, predict: Predict, batch: Batch) -> None:
        prediction = predict(batch["x"])
        transition = batch.get("transition")
        if transition is not None:
            # A target step carries several values (a vector, a field); the step's flag covers them all.
            transition = transition.reshape(transition.shape + (1,) * (prediction.dim() - transition.dim()))
            transition = transition.expand_as(prediction)
        self.stage_metrics[stage].update(prediction, batch["y"], transition)

    def compute_and_reset(self, stage: str) -> dict[str, torch.Tensor]:
        return self.stage_metrics[stage].compute_and_reset()


class ClassificationObjective(nn.Module):
    """Cross-entropy with optional label smoothing for training; loss, perplexity and accuracy for
    evaluation (unsmoothed, so perplexity is the true one)."""

    def __init__(self, output_dim: int, label_smoothing: float = 0.0, **other_task_options: Any) -> None:
        super().__init__()
        reject_options_of_other_tasks("classification", other_task_options)
        if not 0.0 <= label_smoothing < 1.0:
            raise OptionError("label_smoothing", f"label_smoothing={label_smoothing} must lie in [0, 1).")
        self.label_smoothing = label_smoothing
        self.stage_metrics = nn.ModuleDict({stage: ClassificationMetrics(output_dim) for stage in STAGES})

    def training_loss(self, predict: Predict, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        return self.smoothed_cross_entropy(predict(batch["x"]), batch["y"]), {}

    def smoothed_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            label_smoothing=self.label_smoothing,
            ignore_index=IGNORE_INDEX,
        )

    def update(self, stage: str, predict: Predict, batch: Batch) -> None:
        self.stage_metrics[stage].update(predict(batch["x"]), batch["y"], batch.get("characters"))

    def compute_and_reset(self, stage: str) -> dict[str, torch.Tensor]:
        return self.stage_metrics[stage].compute_and_reset()


class Seq2SeqObjective(ClassificationObjective):
    """Cross-entropy over answer tokens with teacher forcing, optionally with scheduled sampling;
    evaluation decodes greedily and reports exact match and per-digit accuracy.

    Scheduled sampling, done the parallel way a transformer allows: a first pass without gradients
    predicts every answer token from the true prefix; each answer token of the input is then
    replaced by that prediction with probability `scheduled_sampling_rate(...)`, and the loss of
    a second pass on the mixed input is taken against the true answer.

    Rows flagged `longer` in the batch (operands longer than any in training) are scored apart,
    as `<stage>/<metric>_longer`.

    Args:
        label_smoothing: cross-entropy label smoothing in [0, 1) (training loss only).
        scheduled_sampling: one of SAMPLING_SCHEDULES; `none` is pure teacher forcing.
        sampling_start: training progress (fraction of all steps) where the rate leaves 0.
        sampling_max_rate: the rate at the end of training, in (0, 1].
    """

    def __init__(
        self,
        output_dim: int,
        label_smoothing: float = 0.0,
        scheduled_sampling: str = "none",
        sampling_start: float = 0.0,
        sampling_max_rate: float = 0.25,
        **other_task_options: Any,
    ) -> None:
        reject_options_of_other_tasks("seq2seq", other_task_options)
        super().__init__(output_dim, label_smoothing)
        if scheduled_sampling not in SAMPLING_SCHEDULES:
            raise OptionError(
                "scheduled_sampling",
                f"scheduled_sampling={scheduled_sampling!r} is not allowed; choose one of: "
                f"{', '.join(SAMPLING_SCHEDULES)}.",
            )
        if not 0.0 <= sampling_start < 1.0:
            raise OptionError("sampling_start", f"sampling_start={sampling_start} must lie in [0, 1).")
        if not 0.0 < sampling_max_rate <= 1.0:
            raise OptionError("sampling_max_rate", f"sampling_max_rate={sampling_max_rate} must lie in (0, 1].")
        if scheduled_sampling == "none":
            defaults = inspect.signature(Seq2SeqObjective).parameters
            for name, value in (("sampling_start", sampling_start), ("sampling_max_rate", sampling_max_rate)):
                if value != defaults[name].default:
                    raise OptionError(
                        name,
                        f"{name}={value} has no effect with scheduled_sampling='none'; choose a schedule "
                        f"({', '.join(SAMPLING_SCHEDULES[1:])}) or leave it at {defaults[name].default}.",
                    )
        self.scheduled_sampling, self.sampling_start, self.sampling_max_rate = (
            scheduled_sampling,
            sampling_start,
            sampling_max_rate,
        )
        # Replaces the classification metrics: answers are scored by decoding, not token by token.
        self.stage_metrics = nn.ModuleDict(
            {f"{stage}{suffix}": Seq2SeqMetrics() for stage in STAGES for suffix in ("", "_longer")}
        )

    def sampling_rate(self, progress: float) -> float:
        """The scheduled-sampling rate at training `progress` (share of all steps; NaN when the
        number of steps is unbounded)."""
        if self.scheduled_sampling == "none":
            return 0.0
        if not math.isfinite(progress):
            raise OptionError(
                "scheduled_sampling",
                f"scheduled_sampling={self.scheduled_sampling!r} follows training progress, so it needs "
                "a finite number of steps; set trainer.max_epochs or trainer.max_steps.",
            )
        return scheduled_sampling_rate(self.scheduled_sampling, progress, self.sampling_start, self.sampling_max_rate)

    def training_loss(self, predict: Predict, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        rate = self.sampling_rate(progress)
        logged = {"sampling_rate": rate} if self.scheduled_sampling != "none" else {}
        x = mix_in_predictions(predict, batch["x"], batch["y"], rate) if rate > 0.0 else batch["x"]
        return self.smoothed_cross_entropy(predict(x), batch["y"]), logged

    def update(self, stage: str, predict: Predict, batch: Batch) -> None:
        logits = predict(batch["x"])
        decoded = greedy_decode(predict, batch["x"], batch["y"])
        longer = batch.get("longer", torch.zeros(len(batch["x"]), dtype=torch.bool, device=logits.device))
        for suffix, rows in (("", ~longer), ("_longer", longer)):
            self.stage_metrics[stage + suffix].update(logits[rows], decoded[rows], batch["y"][rows])

    def compute_and_reset(self, stage: str) -> dict[str, torch.Tensor]:
        values = self.stage_metrics[stage].compute_and_reset()
        longer = self.stage_metrics[f"{stage}_longer"].compute_and_reset()
        return values | {f"{name}_longer": value for name, value in longer.items()}


OBJECTIVES: dict[str, type[nn.Module]] = {
    "regression": RegressionObjective,
    "classification": ClassificationObjective,
    "seq2seq": Seq2SeqObjective,
}
# The metric shown in the progress bar for each task.
HEADLINE_METRIC = {"regression": "mse", "classification": "perplexity", "seq2seq": "exact_match"}


def reject_options_of_other_tasks(task: str, options: dict[str, Any]) -> None:
    """Fail in one sentence when `options` (the `objective:` config block, less the options of the
    `task` objective itself) sets an option of another task's objective away from its default,
    or names an option no objective has."""
    for name, value in options.items():
        owners = [owner for owner, objective in OBJECTIVES.items() if name in inspect.signature(objective).parameters]
        if not owners:
            known = sorted(
                {
                    option
                    for objective in OBJECTIVES.values()
                    for option in inspect.signature(objective).parameters
                    if option not in ("output_dim", "other_task_options")
                }
            )
            raise OptionError(name, f"{name}={value} is not an option of any objective; options: {', '.join(known)}.")
        default = inspect.signature(OBJECTIVES[owners[0]]).parameters[name].default
        if value != default:
            raise OptionError(
                name,
                f"{name}={value} applies to {' and '.join(owners)} tasks only; leave it at {default} for {task} data.",
            )
