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

SCHEDULERS = ("onecycle", "cosine_warmup", "plateau", "none")
STAGES = ("val", "test")


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
        if transition is not None:
            transition = transition.reshape(-1)
        self.mse.update(prediction, target)
        self.mse_zero.update(torch.zeros_like(target), target)
        if transition is not None:
            self.mse_transition.update(prediction[transition], target[transition])
            self.mse_stable.update(prediction[~transition], target[~transition])

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        """Metrics over all processes; one whose targets were all masked out (0/0) is left out.

        compute() synchronises across DDP ranks first, so every rank leaves out the same ones.
        """
        values = {name: metric.compute() for name, metric in self.named_children()}
        for metric in self.children():
            metric.reset()
        return {name: value for name, value in values.items() if torch.isfinite(value)}


class SeamGatedLightningModule(pl.LightningModule):
    """Trains the model registered as `model_type` with AdamW and the chosen LR schedule.

    Args:
        model_type: registry name of the model (see `models.list_models()`).
        model_kwargs: constructor arguments of that model beyond its input/output sizes.
        task: the DataModule's task; the model must support it.
        input_dim, output_dim: sizes declared by the DataModule.
        target_mode: `last` scores only the prediction after the final window step;
            `next_step` scores every step.
        learning_rate, weight_decay: AdamW settings (learning_rate is the peak for `onecycle`).
        scheduler: one of SCHEDULERS.
        warmup_fraction: fraction of all steps spent warming up (`onecycle`, `cosine_warmup`).
    """

    def __init__(
        self,
        model_type: str = "z2_seam",
        model_kwargs: dict[str, Any] | None = None,
        task: str = "regression",
        input_dim: int = 4,
        output_dim: int = 4,
        target_mode: str = "last",
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "onecycle",
        warmup_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if task != "regression":
            raise ValueError(f"task={task!r} is not supported by SeamGatedLightningModule; supported: regression.")
        check_task(model_type, task)
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
        self.model = build_model(model_type, input_dim=input_dim, output_dim=output_dim, **(model_kwargs or {}))
        self.stage_metrics = nn.ModuleDict({stage: RegressionMetrics() for stage in STAGES})
        self.train_loss = torchmetrics.MeanMetric()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        return self.model(x, return_diagnostics=return_diagnostics)

    def scored_prediction(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The predictions the loss and metrics score, shaped like batch["y"], in float32."""
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
        loss = nn.functional.mse_loss(self.scored_prediction(batch), batch["y"])
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

    def _evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        prediction = self.scored_prediction(batch)
        transition = batch.get("transition")
        if transition is not None:
            # Each target step carries obs_dim values; broadcast the per-step flag over them.
            transition = transition.unsqueeze(-1).expand_as(prediction)
        self.stage_metrics[stage].update(prediction, batch["y"], transition)

    def _log_stage_metrics(self, stage: str) -> None:
        values = self.stage_metrics[stage].compute_and_reset()
        if "mse" in values:
            values["loss"] = values["mse"]  # the regression loss is the MSE over all targets
        for name, value in values.items():
            # Already synchronised by torchmetrics; sync_dist only tells Lightning so.
            self.log(f"{stage}/{name}", value, prog_bar=name == "mse", sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_stage_metrics("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

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
