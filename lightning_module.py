"""SeamGatedLightningModule, which trains any registered model on any task-declaring DataModule,
and create_trainer, which applies the project's device and precision rules to a Lightning Trainer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
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
        """Metrics over all processes; one whose targets were all masked out (0/0) is left out.

        compute() synchronises across DDP ranks first, so every rank leaves out the same ones.
        """
        values = finite_values_and_reset(self)
        if "mse" in values:
            values["loss"] = values["mse"]  # the regression loss is the MSE over all targets
        return values


class ClassificationMetrics(nn.Module):
    """Cross-entropy (without label smoothing), perplexity and accuracy over all scored tokens."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.cross_entropy = torchmetrics.MeanMetric()
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
        values = finite_values_and_reset(self)
        if "cross_entropy" in values:
            values["loss"] = values["cross_entropy"]
            values["perplexity"] = values["cross_entropy"].exp()
        return values


def finite_values_and_reset(metrics: nn.Module) -> dict[str, torch.Tensor]:
    values = {name: metric.compute() for name, metric in metrics.named_children()}
    for metric in metrics.children():
        metric.reset()
    return {name: value for name, value in values.items() if torch.isfinite(value)}


class RegressionObjective(nn.Module):
    """MSE training loss; MSE overall, at transitions, at stable steps and of predicting zero."""

    def __init__(self, output_dim: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if label_smoothing != 0.0:
            raise ValueError(f"label_smoothing={label_smoothing} applies to classification and seq2seq "
                             "tasks only; leave it at 0.0 for regression data.")
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

    def __init__(self, output_dim: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1).")
        self.label_smoothing = label_smoothing
        self.stage_metrics = nn.ModuleDict({stage: ClassificationMetrics(output_dim) for stage in STAGES})

    def training_loss(self, module: SeamGatedLightningModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = module.scored_prediction(batch)
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["y"].reshape(-1),
            label_smoothing=self.label_smoothing, ignore_index=IGNORE_INDEX,
        )

    def update(self, stage: str, module: SeamGatedLightningModule, batch: dict[str, torch.Tensor]) -> None:
        self.stage_metrics[stage].update(module.scored_prediction(batch), batch["y"])

    def compute_and_reset(self, stage: str) -> dict[str, torch.Tensor]:
        return self.stage_metrics[stage].compute_and_reset()


OBJECTIVES: dict[str, type[nn.Module]] = {
    "regression": RegressionObjective,
    "classification": ClassificationObjective,
}
# The metric shown in the progress bar for each task.
HEADLINE_METRIC = {"regression": "mse", "classification": "perplexity"}


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
            raise ValueError(f"task={task!r} is not supported by SeamGatedLightningModule; "
                             f"supported: {', '.join(OBJECTIVES)}.")
        sizes = {"input_dim": input_dim, "vocab_size": vocab_size, "input_shape": input_shape}
        given = {key: value for key, value in sizes.items() if value is not None}
        if len(given) != 1:
            raise ValueError(f"exactly one of input_dim, vocab_size, input_shape must be given, got: {', '.join(given) or 'none'}.")
        check_task(model_type, task, input_kind=INPUT_KINDS[next(iter(given))])
        if target_mode not in ("last", "next_step"):
            raise ValueError(f"target_mode={target_mode!r} is not allowed; choose one of: last, next_step.")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate={learning_rate} must be > 0.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r} is not allowed; choose one of: {', '.join(SCHEDULERS)}.")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={warmup_fraction} must lie in [0, 1).")
        self.save_hyperparameters()
        self.model = build_model(model_type, output_dim=output_dim, **given, **(model_kwargs or {}))
        self.objective = OBJECTIVES[task](output_dim, **(objective_kwargs or {}))
        self.train_loss = torchmetrics.MeanMetric()

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

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss"}}
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError(
                f"scheduler={hp.scheduler!r} needs a finite number of steps; set trainer.max_epochs or "
                "trainer.max_steps, or use scheduler=plateau or none."
            )
        # OneCycleLR divides by the length of each phase, so both phases need at least two steps.
        total_steps = max(int(total_steps), 4)
        if hp.scheduler == "onecycle":
            warmup_share = min(max(hp.warmup_fraction, 2.0 / total_steps), 0.5)
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.learning_rate, total_steps=total_steps, pct_start=warmup_share
            )
        else:
            warmup = int(hp.warmup_fraction * total_steps)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


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
