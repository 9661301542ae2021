"""SeamGatedLightningModule, which trains any registered model on any task-declaring DataModule,
and create_trainer, which applies the project's device and precision rules to a Lightning Trainer.
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins import CheckpointIO, TorchCheckpointIO
from torch import nn

from models import build_model, check_task
from models.registry import INPUT_KINDS

SCHEDULERS = ("onecycle", "cosine_warmup", "plateau", "none")
STAGES = ("val", "test")
IGNORE_INDEX = -100  # target id that carries no loss (torch's cross-entropy default)


class RegressionMetrics(nn.Module):
    """MSE over all targets, over transition targets and over stable targets, for one stage."""

    def __init__(self) -> None:
        super().__init__()
        self.mse = torchmetrics.MeanSquaredError()
        self.mse_transition = torchmetrics.MeanSquaredError()
        self.mse_stable = torchmetrics.MeanSquaredError()
        self.mse_zero = torchmetrics.MeanSquaredError()  # predicting 0: the floor any model must beat

    def update(self, prediction: torch.Tensor, target: torch.Tensor, transition: torch.Tensor | None) -> None:
        prediction, target = prediction.reshape(-1), target.reshape(-1)
        self.mse.update(prediction, target)
        self.mse_zero.update(torch.zeros_like(target), target)
        if transition is not None:
            transition = transition.reshape(-1)
            self.mse_transition.update(prediction[transition], target[transition])
            self.mse_stable.update(prediction[~transition], target[~transition])

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        """Metrics over all processes; one whose targets were all masked out is left out."""
        values = values_and_reset(self)
        if "mse" in values:
            values["loss"] = values["mse"]  # the regression loss is the MSE over all targets
        return values


class ClassificationMetrics(nn.Module):
    """Cross-entropy (without label smoothing), perplexity and accuracy over all scored tokens."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.cross_entropy = mean_metric()
        self.accuracy = torchmetrics.classification.MulticlassAccuracy(
            num_classes, average="micro", ignore_index=IGNORE_INDEX
        )

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
        scored = target != IGNORE_INDEX
        losses = nn.functional.cross_entropy(logits[scored], target[scored], reduction="none")
        self.cross_entropy.update(losses)
        self.accuracy.update(logits, target)

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        values = values_and_reset(self)
        if "cross_entropy" in values:
            values["loss"] = values["cross_entropy"]
            values["perplexity"] = values["cross_entropy"].exp()
        return values


def values_and_reset(metrics: nn.Module) -> dict[str, torch.Tensor]:
    """Every metric's value over all processes, NaN and inf included, then reset.

    A diverged model's NaN must reach the loggers, so that EarlyStopping(check_finite) fires and
    metrics.json records it. A metric that averaged nothing (every target masked out, e.g. a split
    without transition steps) has no value and is left out; its count is summed over DDP ranks
    first, so every rank leaves out the same ones.
    """
    values = {}
    for name, metric in metrics.named_children():
        with metric.sync_context():
            averaged_something = bool(denominator(metric) > 0)
        if averaged_something:
            values[name] = metric.compute()
        metric.reset()
    return values


def denominator(metric: torchmetrics.Metric) -> torch.Tensor:
    """How many values `metric` averages (its accumulated count)."""
    if isinstance(metric, torchmetrics.MeanSquaredError):
        return metric.total
    if isinstance(metric, torchmetrics.MeanMetric):
        return metric.weight
    return (metric.tp + metric.fn).sum()  # a micro-averaged accuracy: every scored target is a tp or an fn


def mean_metric() -> torchmetrics.MeanMetric:
    """A running mean that keeps NaN and inf (torchmetrics' default drops them with a warning)."""
    return torchmetrics.MeanMetric(nan_strategy="disable")


class RegressionObjective(nn.Module):
    """MSE training loss; MSE overall, at transitions, at stable steps and of predicting zero."""

    def __init__(self, output_dim: int, **other_task_options: Any) -> None:
        super().__init__()
        reject_options_of_other_tasks("regression", other_task_options)
        self.stage_metrics = nn.ModuleDict({stage: RegressionMetrics() for stage in STAGES})

    def training_loss(self, module: SeamGatedLightningModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(module.scored_prediction(batch), batch["y"])

    def update(self, stage: str, module: SeamGatedLightningModule, batch: dict[str, torch.Tensor]) -> None:
        prediction = module.scored_prediction(batch)
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
            raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1).")
        self.label_smoothing = label_smoothing
        self.stage_metrics = nn.ModuleDict({stage: ClassificationMetrics(output_dim) for stage in STAGES})

    def training_loss(self, module: SeamGatedLightningModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.smoothed_cross_entropy(module.scored_prediction(batch), batch["y"])

    def smoothed_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
            label_smoothing=self.label_smoothing, ignore_index=IGNORE_INDEX,
        )

    def update(self, stage: str, module: SeamGatedLightningModule, batch: dict[str, torch.Tensor]) -> None:
        self.stage_metrics[stage].update(module.scored_prediction(batch), batch["y"])

    def compute_and_reset(self, stage: str) -> dict[str, torch.Tensor]:
        return self.stage_metrics[stage].compute_and_reset()


class Seq2SeqMetrics(nn.Module):
    """Teacher-forced cross-entropy over answer tokens, and for greedily decoded answers the share
    of exactly right answers and of right answer tokens (digits, for multiplication)."""

    def __init__(self) -> None:
        super().__init__()
        self.cross_entropy = mean_metric()
        self.exact_match = mean_metric()
        self.digit_accuracy = mean_metric()

    def update(self, logits: torch.Tensor, decoded: torch.Tensor, target: torch.Tensor) -> None:
        """logits (B, T, V) under teacher forcing, decoded (B, T) greedy tokens, target (B, T)."""
        scored = target != IGNORE_INDEX
        self.cross_entropy.update(nn.functional.cross_entropy(logits[scored], target[scored], reduction="none"))
        correct = decoded == target
        self.digit_accuracy.update(correct[scored].float())
        self.exact_match.update((correct | ~scored).all(dim=1).float())

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        values = values_and_reset(self)
        if "cross_entropy" in values:
            values["loss"] = values["cross_entropy"]
        return values


@torch.no_grad()
def greedy_decode(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every row's answer generated token by token from its prompt, each step feeding the model's
    own argmax back in: (B, T) with the chosen token at the scored positions of y and IGNORE_INDEX
    elsewhere.

    Rows are laid out for teacher forcing (x[t+1] = y[t]) with the answer at the contiguous scored
    positions of y, so the prompt is x up to the first scored position. A causal model's output at
    t never depends on inputs after t, so decoding overwrites the answer slots of x in place and
    the teacher-forced answer tokens there are never seen.
    """
    scored = y != IGNORE_INDEX
    first = scored.int().argmax(dim=1)
    answer_length = scored.sum(dim=1)
    generated, decoded = x.clone(), torch.full_like(y, IGNORE_INDEX)
    rows = torch.arange(len(x), device=x.device)
    for step in range(int(answer_length.max()) if len(x) else 0):
        active = step < answer_length
        position = (first + step).clamp(max=x.shape[1] - 1)
        choice = model(generated)[rows, position].argmax(dim=-1)
        decoded[rows[active], position[active]] = choice[active]
        feed = active & (position + 1 < x.shape[1])
        generated[rows[feed], position[feed] + 1] = choice[feed]
    return decoded


SAMPLING_SCHEDULES = ("none", "linear", "cosine", "step")


def scheduled_sampling_rate(schedule: str, progress: float, start: float, max_rate: float) -> float:
    """Share of answer tokens fed from the model's own predictions at training `progress` in [0, 1]:
    0 until `start`, then rising to `max_rate` at the end of training, linearly, along a half
    cosine, or (`step`) at once."""
    if schedule == "none" or progress < start:
        return 0.0
    ramp = min(1.0, (progress - start) / (1.0 - start))
    if schedule == "linear":
        return max_rate * ramp
    if schedule == "cosine":
        return max_rate * 0.5 * (1.0 - math.cos(math.pi * ramp))
    return max_rate


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

    def __init__(self, output_dim: int, label_smoothing: float = 0.0, scheduled_sampling: str = "none",
                 sampling_start: float = 0.0, sampling_max_rate: float = 0.25, **other_task_options: Any) -> None:
        reject_options_of_other_tasks("seq2seq", other_task_options)
        super().__init__(output_dim, label_smoothing)
        if scheduled_sampling not in SAMPLING_SCHEDULES:
            raise ValueError(f"scheduled_sampling={scheduled_sampling!r} is not allowed; choose one of: "
                             f"{', '.join(SAMPLING_SCHEDULES)}.")
        if not 0.0 <= sampling_start < 1.0:
            raise ValueError(f"sampling_start={sampling_start} must lie in [0, 1).")
        if not 0.0 < sampling_max_rate <= 1.0:
            raise ValueError(f"sampling_max_rate={sampling_max_rate} must lie in (0, 1].")
        if scheduled_sampling == "none":
            defaults = inspect.signature(Seq2SeqObjective).parameters
            for name, value in (("sampling_start", sampling_start), ("sampling_max_rate", sampling_max_rate)):
                if value != defaults[name].default:
                    raise ValueError(f"{name}={value} has no effect with scheduled_sampling='none'; choose a schedule "
                                     f"({', '.join(SAMPLING_SCHEDULES[1:])}) or leave it at {defaults[name].default}.")
        self.scheduled_sampling, self.sampling_start, self.sampling_max_rate = (
            scheduled_sampling, sampling_start, sampling_max_rate)
        # Replaces the classification metrics: answers are scored by decoding, not token by token.
        self.stage_metrics = nn.ModuleDict(
            {f"{stage}{suffix}": Seq2SeqMetrics() for stage in STAGES for suffix in ("", "_longer")})

    def sampling_rate(self, module: SeamGatedLightningModule) -> float:
        if self.scheduled_sampling == "none":
            return 0.0
        total_steps = module.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError(f"scheduled_sampling={self.scheduled_sampling!r} follows training progress, so it needs "
                             "a finite number of steps; set trainer.max_epochs or trainer.max_steps.")
        progress = module.global_step / max(1, total_steps)
        return scheduled_sampling_rate(self.scheduled_sampling, progress, self.sampling_start, self.sampling_max_rate)

    def training_loss(self, module: SeamGatedLightningModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rate = self.sampling_rate(module)
        if self.scheduled_sampling != "none" and module._is_logging_step():
            module.log("train/sampling_rate", rate)
        if rate > 0.0:
            batch = {**batch, "x": self.mix_in_predictions(module, batch, rate)}
        return self.smoothed_cross_entropy(module.scored_prediction(batch), batch["y"])

    @staticmethod
    def mix_in_predictions(module: SeamGatedLightningModule, batch: dict[str, torch.Tensor], rate: float) -> torch.Tensor:
        """x with each answer token replaced, with probability `rate`, by the model's prediction of it."""
        with torch.no_grad():
            predicted = module.model(batch["x"]).argmax(dim=-1)
        scored = batch["y"] != IGNORE_INDEX
        # x[t] is an answer token exactly when the targets at t - 1 and t are both answer tokens.
        answer_inputs = scored[:, :-1] & scored[:, 1:]
        replace = answer_inputs & (torch.rand(answer_inputs.shape, device=scored.device) < rate)
        x = batch["x"].clone()
        x[:, 1:] = torch.where(replace, predicted[:, :-1], x[:, 1:])
        return x

    def update(self, stage: str, module: SeamGatedLightningModule, batch: dict[str, torch.Tensor]) -> None:
        logits = module.scored_prediction(batch)
        decoded = greedy_decode(module.model, batch["x"], batch["y"])
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
            known = sorted({option for objective in OBJECTIVES.values()
                            for option in inspect.signature(objective).parameters
                            if option not in ("output_dim", "other_task_options")})
            raise ValueError(f"{name}={value} is not an option of any objective; options: {', '.join(known)}.")
        default = inspect.signature(OBJECTIVES[owners[0]]).parameters[name].default
        if value != default:
            raise ValueError(f"{name}={value} applies to {' and '.join(owners)} tasks only; "
                             f"leave it at {default} for {task} data.")


class SeamGatedLightningModule(pl.LightningModule):
    """Trains the model registered as `model_type` on the DataModule's task, with AdamW and the
    chosen LR schedule.

    Args:
        model_type: registry name of the model (see `models.list_models()`).
        model_kwargs: constructor arguments of that model beyond its input/output sizes.
        task: the DataModule's task (a key of OBJECTIVES); the model must support it.
        input_dim, vocab_size, input_shape: the one input size the DataModule declares (vectors,
            token ids or (C, H, W) fields); the model must read that kind of input.
        output_dim: output size declared by the DataModule (the vocabulary size for tokens).
        target_mode: `last` scores only the prediction after the final window step;
            `next_step` scores every step.
        learning_rate, weight_decay: AdamW settings (learning_rate is the peak for `onecycle`).
        betas, eps: AdamW's moment decay rates and denominator term.
        scheduler: one of SCHEDULERS.
        warmup_fraction: fraction of all steps spent warming up (`onecycle`, `cosine_warmup`).
        cycle_momentum: `onecycle` only: cycle beta1 inversely to the LR, from 0.95 down to 0.85 at the
            peak LR and back (betas[0] must then stay 0.9); false keeps betas[0] throughout.
        plateau_factor, plateau_patience: `plateau`: LR factor and validation epochs without improvement.
        min_lr: the LR floor: `plateau` never cuts below it, `cosine_warmup` decays to it, `onecycle`
            anneals to it (at 0, OneCycleLR's own end, peak / 2.5e5).
        objective_kwargs: options of the task's objective, e.g. `label_smoothing`.
    """

    def __init__(
        self,
        model_type: str = "z2_seam",
        model_kwargs: dict[str, Any] | None = None,
        task: str = "regression",
        input_dim: int | None = None,
        output_dim: int = 4,
        target_mode: str = "last",
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "onecycle",
        warmup_fraction: float = 0.1,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        eps: float = 1e-8,
        cycle_momentum: bool = True,
        plateau_factor: float = 0.5,
        plateau_patience: int = 3,
        min_lr: float = 0.0,
        vocab_size: int | None = None,
        input_shape: tuple[int, int, int] | list[int] | None = None,
        objective_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in OBJECTIVES:
            raise ValueError(f"task={task!r} is not supported by SeamGatedLightningModule; "
                             f"supported: {', '.join(OBJECTIVES)}.")
        sizes = {"input_dim": input_dim, "vocab_size": vocab_size, "input_shape": input_shape}
        given = {key: value for key, value in sizes.items() if value is not None}
        if len(given) != 1:
            raise ValueError(f"exactly one of input_dim, vocab_size, input_shape must be given, got: {', '.join(given) or 'none'}.")
        check_task(model_type, task, input_kind=INPUT_KINDS[next(iter(given))])
        if target_mode not in ("last", "next_step"):
            raise ValueError(f"target_mode={target_mode!r} is not allowed; choose one of: last, next_step.")
        if task == "seq2seq" and target_mode != "next_step":
            raise ValueError(f"target_mode={target_mode!r} is not allowed for seq2seq data, whose targets are "
                             "whole answers scored step by step; use next_step.")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate={learning_rate} must be > 0.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r} is not allowed; choose one of: {', '.join(SCHEDULERS)}.")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={warmup_fraction} must lie in [0, 1).")
        betas = tuple(float(beta) for beta in betas)
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas={list(betas)} must be two numbers in [0, 1).")
        if scheduler == "onecycle" and cycle_momentum and betas[0] != 0.9:
            raise ValueError(f"betas={list(betas)}: onecycle with cycle_momentum=true cycles beta1 between 0.95 and "
                             "0.85 in place of betas[0]; set optim.cycle_momentum=false to keep it, or betas[0]=0.9.")
        if eps <= 0:
            raise ValueError(f"eps={eps} must be > 0.")
        if not 0.0 < plateau_factor < 1.0:
            raise ValueError(f"plateau_factor={plateau_factor} must lie in (0, 1).")
        if plateau_patience < 0:
            raise ValueError(f"plateau_patience={plateau_patience} must be >= 0.")
        if not 0.0 <= min_lr < learning_rate:
            raise ValueError(f"min_lr={min_lr} must lie in [0, learning_rate={learning_rate}).")
        self.save_hyperparameters()
        self.model = build_model(model_type, output_dim=output_dim, **given, **(model_kwargs or {}))
        if target_mode == "next_step" and getattr(self.model, "sees_future_steps", False):
            raise ValueError(
                "bidirectional=True lets each step's output see the steps it must predict, so it is refused for "
                "next-step prediction; set model.bidirectional=false, or data.target_mode=last where the data has it."
            )
        self.objective = OBJECTIVES[task](output_dim, **(objective_kwargs or {}))
        self.train_loss = mean_metric()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        return self.model(x, return_diagnostics=return_diagnostics)

    def scored_prediction(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model outputs the loss and metrics score (predictions or logits), aligned with
        batch["y"], in float32."""
        prediction = self.model(batch["x"])
        # Mixed precision: score in float32 so the loss and metrics do not lose digits.
        prediction = prediction.float()
        return prediction[:, -1] if self.hparams.target_mode == "last" else prediction

    def _is_logging_step(self) -> bool:
        """True on the steps Lightning writes to the loggers (every trainer.log_every_n_steps).

        Each self.log call costs Lightning about a millisecond of bookkeeping, as much as a whole
        small training step, so step scalars are only produced when they will be written.
        """
        return (self.global_step + 1) % self.trainer.log_every_n_steps == 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.objective.training_loss(self, batch)
        self.train_loss.update(loss.detach(), weight=len(batch["x"]))
        if self._is_logging_step():
            self.log_dict({"train/loss": loss, "train/lr": self.optimizers().param_groups[0]["lr"]}, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss.compute(), sync_dist=True)
        self.train_loss.reset()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after AMP unscaling, so this is the true gradient norm (before clipping).
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and self._is_logging_step():
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def _log_stage_metrics(self, stage: str) -> None:
        headline = HEADLINE_METRIC.get(self.hparams.task)
        for name, value in self.objective.compute_and_reset(stage).items():
            # Already synchronised by torchmetrics; sync_dist only tells Lightning so.
            self.log(f"{stage}/{name}", value, prog_bar=name == headline, sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.objective.update("val", self, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_stage_metrics("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.objective.update("test", self, batch)

    def on_test_epoch_end(self) -> None:
        self._log_stage_metrics("test")

    def schedule_length(self) -> int:
        """Optimizer steps the LR schedule spans: all steps of this fit (trainer.max_epochs/max_steps)."""
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError(
                f"scheduler={self.hparams.scheduler!r} needs a finite number of steps; set trainer.max_epochs or "
                "trainer.max_steps, or use scheduler=plateau or none."
            )
        # OneCycleLR divides by the length of each phase, so both phases need at least two steps.
        return max(int(total_steps), 4)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay,
                                      betas=hp.betas, eps=hp.eps)
        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=hp.plateau_factor, patience=hp.plateau_patience, min_lr=hp.min_lr)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss"}}
        total_steps = self.schedule_length()
        if hp.scheduler == "onecycle":
            warmup_share = min(max(hp.warmup_fraction, 2.0 / total_steps), 0.5)
            start_lr = hp.learning_rate / 25.0  # OneCycleLR's div_factor
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.learning_rate, total_steps=total_steps, pct_start=warmup_share,
                cycle_momentum=hp.cycle_momentum, final_div_factor=start_lr / hp.min_lr if hp.min_lr else 1e4,
            )
        else:
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, WarmupCosine(int(hp.warmup_fraction * total_steps), total_steps, hp.min_lr / hp.learning_rate))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        # A run resumed with a larger trainer.max_epochs/max_steps than its checkpoint was trained for.
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.LambdaLR)):
                stretch_remaining_schedule(config.scheduler, self.schedule_length())


class WarmupCosine:
    """LambdaLR multiplier: `warmup_cosine`, floored at `floor`, with the stretches that
    `stretch_remaining_schedule` applied on resume. A callable object, not a closure, so that
    LambdaLR saves its attributes in the checkpoint."""

    def __init__(self, warmup_steps: int, total_steps: int, floor: float = 0.0) -> None:
        self.warmup_steps, self.total_steps, self.floor = warmup_steps, total_steps, floor
        self.length = total_steps  # the steps it spans now, after the stretches
        self.stretches: list[tuple[int, float]] = []  # (resumed at step, old remaining / new remaining)

    def __call__(self, step: int) -> float:
        for resumed_at, scale in reversed(self.stretches):
            step = resumed_at + (step - resumed_at) * scale if step > resumed_at else step
        return self.floor + (1.0 - self.floor) * warmup_cosine(step, self.warmup_steps, self.total_steps)


def stretch_remaining_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, total_steps: int) -> None:
    """Spread the part of a step schedule not yet run over a new total of `total_steps` steps.

    A run resumed with a larger budget than its checkpoint's schedule was built for (which would
    otherwise end, or for OneCycleLR fail, past the old last step) continues from the LR and
    momentum it stopped at, and runs the rest of the old schedule (warm-up, annealing) slowed down
    to end at the new last step. A finished schedule has no rest: the extra steps stay at its final
    LR. A schedule already of this length is left alone, so resuming with the same budget is exact.
    """
    resumed_at = scheduler.last_epoch
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        (multiplier,) = scheduler.lr_lambdas
        if isinstance(multiplier, WarmupCosine) and multiplier.length != total_steps:
            scale = max(0, multiplier.length - resumed_at) / (total_steps - resumed_at)
            multiplier.stretches.append((resumed_at, scale))
            multiplier.length = total_steps
        return
    if scheduler.total_steps == total_steps:
        return
    old_last, new_last = scheduler.total_steps - 1, total_steps - 1
    last_phase = scheduler._schedule_phases[-1]
    for group in scheduler.optimizer.param_groups:
        if resumed_at > old_last:  # finished: OneCycleLR's one step past its end has left a stray LR
            group["lr"] = group[last_phase["end_lr"]]
            if scheduler.cycle_momentum and "betas" in group:
                group["betas"] = (group[last_phase["end_momentum"]], *group["betas"][1:])
            elif scheduler.cycle_momentum:
                group["momentum"] = group[last_phase["end_momentum"]]
        group["resume_lr"] = group["lr"]
        if scheduler.cycle_momentum:
            group["resume_momentum"] = group["betas"][0] if "betas" in group else group["momentum"]
    resume = {"start_lr": "resume_lr", "start_momentum": "resume_momentum"}
    hold = {**resume, "end_lr": "resume_lr", "end_momentum": "resume_momentum"}
    remaining = [phase for phase in scheduler._schedule_phases if phase["end_step"] > resumed_at]
    scale = (new_last - resumed_at) / (old_last - resumed_at) if remaining else 0.0
    phases = [{**phase, "end_step": resumed_at + (phase["end_step"] - resumed_at) * scale} for phase in remaining]
    if phases:
        phases[0].update(resume)  # the phase it stopped in continues from where it stopped
        phases[-1]["end_step"] = float(new_last)
    # A phase ending at the resume step makes every later step start counting from there.
    scheduler._schedule_phases = [{**hold, "end_step": float(resumed_at)}, *(phases or [{**hold, "end_step": float(new_last)}])]
    scheduler.total_steps = total_steps


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_accelerator(accelerator: str) -> str:
    """`auto` picks CUDA, then MPS, then CPU; anything else is passed to Lightning unchanged."""
    if accelerator != "auto":
        return accelerator
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str | int, accelerator: str) -> str:
    """`auto`: bf16-mixed on CUDA with bf16, 16-mixed on older CUDA, 32-true on MPS and CPU.

    An explicit choice is kept; Lightning itself swaps 16-mixed for bf16-mixed on CPU with one
    warning, since fp16 autocast is not supported there.
    """
    precision = str(precision)
    if precision != "auto":
        return precision
    if accelerator in ("cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place.

    A rename is atomic on POSIX and Windows, so a crash or a full disk mid-write leaves the previous
    `last.ckpt` whole instead of truncated.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps the best score when a run resumes into another checkpoint dir.

    Lightning's ModelCheckpoint forgets the best score when the checkpoint it resumes from was
    written to another dirpath, so "best" would become the best of the resumed part only. This one
    copies the best checkpoint(s) of the old dir into the new one (atomically; the old files are
    only read) and carries their scores, so later improvements replace the copies, never the
    originals. A best checkpoint that no longer exists is dropped with a warning.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath", self.dirpath)
        if old_dir == self.dirpath or self.dirpath is None:
            super().load_state_dict(state_dict)
            return
        carried: dict[str, Any] = {}
        for old_path, score in (state_dict.get("best_k_models") or {}).items():
            if not Path(old_path).is_file():
                warnings.warn(f"the best checkpoint {old_path} of the resumed run is gone; its score is not carried.")
                continue
            new_path = Path(self.dirpath) / Path(old_path).name
            new_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = new_path.with_name(f".{new_path.name}.{os.getpid()}.tmp")
            shutil.copyfile(old_path, temporary)
            os.replace(temporary, new_path)
            carried[str(new_path)] = score
        super().load_state_dict({**state_dict, "dirpath": self.dirpath, "best_k_models": carried,
                                 "last_model_path": "", **self._best_of(carried)})

    def _best_of(self, models: dict[str, Any]) -> dict[str, Any]:
        if not models:
            return {"best_model_path": "", "best_model_score": None, "kth_best_model_path": "", "kth_value": self.kth_value}
        ordered = sorted(models, key=lambda path: float(models[path]), reverse=self.mode == "max")
        return {"best_model_path": ordered[0], "best_model_score": models[ordered[0]],
                "kth_best_model_path": ordered[-1], "kth_value": models[ordered[-1]]}


def create_trainer(
    max_epochs: int = 20,
    accelerator: str = "auto",
    precision: str | int = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    callbacks: list[pl.Callback] | None = None,
    logger: Any = True,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """A Lightning Trainer with the project's `auto` device and precision rules applied and
    checkpoints written atomically."""
    accelerator = resolve_accelerator(accelerator)
    plugins = list(trainer_kwargs.pop("plugins", None) or [])
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        precision=resolve_precision(precision, accelerator),
        devices=devices,
        strategy=strategy,
        callbacks=callbacks,
        logger=logger,
        plugins=plugins,
        **trainer_kwargs,
    )
