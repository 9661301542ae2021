"""SeamGatedLightningModule, which trains any registered model on any task-declaring DataModule,
and create_trainer, which applies the project's device and precision rules to a Lightning Trainer.

The pieces live in the training/ package (objectives, metrics, decoding, schedules, trainer,
checkpoint IO); this module wires them together and does all the logging.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics

from models import build_model, check_task
from models.contract import INPUT_KINDS, OptionError
from training.objectives import HEADLINE_METRIC, OBJECTIVES
from training.schedules import SCHEDULERS, STEP_SCHEDULERS, lr_scheduler_config
from training.trainer import create_trainer

__all__ = ["SeamGatedLightningModule", "create_trainer"]


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
        scheduler: one of SCHEDULERS.
        warmup_fraction: fraction of all steps spent warming up (`onecycle`, `cosine_warmup`).
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
        vocab_size: int | None = None,
        input_shape: tuple[int, int, int] | list[int] | None = None,
        objective_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in OBJECTIVES:
            raise OptionError("task", f"task={task!r} is not supported by SeamGatedLightningModule; "
                             f"supported: {', '.join(OBJECTIVES)}.")
        sizes = {"input_dim": input_dim, "vocab_size": vocab_size, "input_shape": input_shape}
        given = {key: value for key, value in sizes.items() if value is not None}
        if len(given) != 1:
            raise ValueError(f"exactly one of input_dim, vocab_size, input_shape must be given, got: {', '.join(given) or 'none'}.")
        check_task(model_type, task, input_kind=INPUT_KINDS[next(iter(given))])
        if target_mode not in ("last", "next_step"):
            raise OptionError("target_mode", f"target_mode={target_mode!r} is not allowed; choose one of: last, next_step.")
        if task == "seq2seq" and target_mode != "next_step":
            raise OptionError("target_mode", f"target_mode={target_mode!r} is not allowed for seq2seq data, whose targets are "
                             "whole answers scored step by step; use next_step.")
        if learning_rate <= 0:
            raise OptionError("learning_rate", f"learning_rate={learning_rate} must be > 0.")
        if weight_decay < 0:
            raise OptionError("weight_decay", f"weight_decay={weight_decay} must be >= 0.")
        if scheduler not in SCHEDULERS:
            raise OptionError("scheduler", f"scheduler={scheduler!r} is not allowed; choose one of: {', '.join(SCHEDULERS)}.")
        if not 0.0 <= warmup_fraction < 1.0:
            raise OptionError("warmup_fraction", f"warmup_fraction={warmup_fraction} must lie in [0, 1).")
        self.save_hyperparameters()
        self.model = build_model(model_type, output_dim=output_dim, **given, **(model_kwargs or {}))
        if target_mode == "next_step" and self.model.sees_future_steps:
            raise OptionError(
                "bidirectional", "bidirectional=True lets each step's output see the steps it must predict, so it is refused for "
                "next-step prediction; set model.bidirectional=false, or data.target_mode=last where the data has it."
            )
        self.objective = OBJECTIVES[task](output_dim, **(objective_kwargs or {}))
        self.train_loss = torchmetrics.MeanMetric()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        return self.model(x, return_diagnostics=return_diagnostics)

    def scored_prediction(self, x: torch.Tensor) -> torch.Tensor:
        """The model outputs for input `x` that the loss and metrics score (predictions or logits),
        aligned with the batch's targets, in float32."""
        prediction = self.model(x)
        # Mixed precision: score in float32 so the loss and metrics do not lose digits.
        prediction = prediction.float()
        return prediction[:, -1] if self.hparams.target_mode == "last" else prediction

    def _is_logging_step(self) -> bool:
        """True on the steps Lightning writes to the loggers (every trainer.log_every_n_steps).

        Each self.log call costs Lightning about a millisecond of bookkeeping, as much as a whole
        small training step, so step scalars are only produced when they will be written.
        """
        return (self.global_step + 1) % self.trainer.log_every_n_steps == 0

    def on_train_start(self) -> None:
        # Read once: the trainer re-derives it from the loaders on every access.
        self._total_steps = self.trainer.estimated_stepping_batches

    def training_progress(self) -> float:
        """Share of all training steps done so far; NaN when training has no step limit."""
        total_steps = getattr(self, "_total_steps", math.inf)
        return self.global_step / max(1, total_steps) if math.isfinite(total_steps) else math.nan

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, scalars = self.objective.training_loss(self.scored_prediction, batch, self.training_progress())
        self.train_loss.update(loss.detach(), weight=len(batch["x"]))
        if self._is_logging_step():
            self.log_dict({f"train/{name}": value for name, value in scalars.items()})
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
        self.objective.update("val", self.scored_prediction, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_stage_metrics("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.objective.update("test", self.scored_prediction, batch)

    def on_test_epoch_end(self) -> None:
        self._log_stage_metrics("test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        total_steps = self.trainer.estimated_stepping_batches if hp.scheduler in STEP_SCHEDULERS else None
        schedule = lr_scheduler_config(optimizer, hp.scheduler, hp.learning_rate, hp.warmup_fraction, total_steps)
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}
