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

from models import build_model, check_task
from models.contract import INPUT_KINDS, OptionError
from training.objectives import HEADLINE_METRIC, OBJECTIVES
from training.optimizers import adamw, adamw_fused_flag, check_adamw_options, fused_adamw_blocker
from training.schedules import (
    STEP_SCHEDULERS,
    check_schedule_options,
    lr_scheduler_config,
    schedule_length,
    stretch_remaining_schedule,
)
from training.trainer import create_trainer

__all__ = ["SeamGatedLightningModule", "create_trainer"]

SEED_OBSERVATION_DIM = 4  # data.generator.obs_dim of the antipodal data, the input the seed's snippets assume


def next_observation_size(
    input_dim: int | None = None,
    vocab_size: int | None = None,
    input_shape: tuple[int, int, int] | list[int] | None = None,
) -> int:
    """The output size of a model that predicts its next input: a vector, a token id or a field."""
    if input_dim is not None:
        return input_dim
    if vocab_size is not None:
        return vocab_size
    return math.prod(input_shape)


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
        fused: AdamW's fused kernel (one call per update, not ~10 ops per parameter tensor): `auto`
            uses it where torch has one for the parameters' device, except under mixed precision
            with gradient clipping or 16-mixed's GradScaler; True insists (refused where it cannot
            run), False never. On resume this setting, not the checkpoint's, decides.
        scheduler: one of SCHEDULERS.
        warmup_fraction: fraction of all steps spent warming up (`onecycle`, `cosine_warmup`).
        cycle_momentum: `onecycle` only: cycle beta1 inversely to the LR, from 0.95 down to 0.85 at the
            peak LR and back (betas[0] must then stay 0.9); false keeps betas[0] throughout.
        plateau_factor, plateau_patience: `plateau`: LR factor and validation epochs without improvement.
        min_lr: the LR floor: `plateau` never cuts below it, `cosine_warmup` decays to it, `onecycle`
            anneals to it (at 0, OneCycleLR's own end, peak / 2.5e5).
        objective_kwargs: options of the task's objective, e.g. `label_smoothing`.
        stateful: truncated backprop through time on consecutive chunks (data.stateful): each
            training batch starts from the detached final state of the previous one, and the first
            batch of every epoch from zeros. Needs a model with `forward_with_state`.
        use_amp: the seed's switch, as a check: True (False) makes fit refuse, in one sentence, a
            trainer that does not (does) train in mixed precision; None leaves it to the trainer.
            The precision itself is the trainer's: create_trainer(precision=...) or trainer.precision=...

    With no input size, input_dim is the antipodal data's observation size (4); with no output_dim,
    the model predicts its next input (observation, token or field): output_dim is the input's size.
    """

    def __init__(
        self,
        model_type: str = "z2_seam",
        model_kwargs: dict[str, Any] | None = None,
        task: str = "regression",
        input_dim: int | None = None,
        output_dim: int | None = None,
        target_mode: str = "last",
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "onecycle",
        warmup_fraction: float = 0.1,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | str = "auto",
        cycle_momentum: bool = True,
        plateau_factor: float = 0.5,
        plateau_patience: int = 3,
        min_lr: float = 0.0,
        vocab_size: int | None = None,
        input_shape: tuple[int, int, int] | list[int] | None = None,
        objective_kwargs: dict[str, Any] | None = None,
        stateful: bool = False,
        use_amp: bool | None = None,
    ) -> None:
        super().__init__()
        if task not in OBJECTIVES:
            raise OptionError(
                "task",
                f"task={task!r} is not supported by SeamGatedLightningModule; supported: {', '.join(OBJECTIVES)}.",
            )
        sizes = {"input_dim": input_dim, "vocab_size": vocab_size, "input_shape": input_shape}
        given = {key: value for key, value in sizes.items() if value is not None}
        if not given:
            input_dim = SEED_OBSERVATION_DIM
            given = {"input_dim": input_dim}
        if len(given) != 1:
            raise ValueError(
                f"exactly one of input_dim, vocab_size, input_shape must be given, got: {', '.join(given) or 'none'}."
            )
        check_task(model_type, task, input_kind=INPUT_KINDS[next(iter(given))])
        if target_mode not in ("last", "next_step"):
            raise OptionError(
                "target_mode", f"target_mode={target_mode!r} is not allowed; choose one of: last, next_step."
            )
        if task == "seq2seq" and target_mode != "next_step":
            raise OptionError(
                "target_mode",
                f"target_mode={target_mode!r} is not allowed for seq2seq data, whose targets are "
                "whole answers scored step by step; use next_step.",
            )
        betas = check_adamw_options(
            learning_rate=learning_rate, weight_decay=weight_decay, betas=betas, eps=eps, fused=fused
        )
        check_schedule_options(
            scheduler=scheduler,
            warmup_fraction=warmup_fraction,
            cycle_momentum=cycle_momentum,
            betas=betas,
            plateau_factor=plateau_factor,
            plateau_patience=plateau_patience,
            min_lr=min_lr,
            learning_rate=learning_rate,
        )
        if output_dim is None:
            output_dim = next_observation_size(**given)
        self.save_hyperparameters()
        self.model = build_model(model_type, output_dim=output_dim, **given, **(model_kwargs or {}))
        if target_mode == "next_step" and self.model.sees_future_steps:
            raise OptionError(
                "bidirectional",
                "bidirectional=True lets each step's output see the steps it must predict, so it is refused for "
                "next-step prediction; set model.bidirectional=false, or data.target_mode=last where the data has it.",
            )
        if stateful and not hasattr(self.model, "forward_with_state"):
            raise ValueError(
                f"stateful=True needs a model that returns its final state; {model_type} has no forward_with_state."
            )
        self.objective = OBJECTIVES[task](output_dim, **(objective_kwargs or {}))
        # The epoch's training loss, summed on the device: a metric object would check every step's
        # value for NaN on the host (a device sync per step) and upload the batch weight.
        self.register_buffer("train_loss_sum", torch.zeros(()), persistent=False)
        self.train_samples = 0
        self.carried_state = None  # stateful training: the detached final state of the last batch

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning names the running hook in _current_fx_name before and after every hook call,
        # about 50 times a training step; nn.Module.__setattr__ would search the parameter, buffer
        # and submodule tables each time (2-4 % of a default 2 ms step). A string is none of those.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        return self.model(x, return_diagnostics=return_diagnostics)

    def scored_prediction(self, x: torch.Tensor) -> torch.Tensor:
        """The model outputs for input `x` that the loss and metrics score (predictions or logits),
        aligned with the batch's targets, in float32."""
        if self.hparams.stateful and self.training:
            prediction, state = self.model.forward_with_state(x, self.carried_state)
            # Detached: gradients stop at the chunk boundary (truncated BPTT), memory stays one chunk.
            self.carried_state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        else:
            prediction = self.model(x)
        # Mixed precision: score in float32 so the loss and metrics do not lose digits.
        prediction = prediction.float()
        return prediction[:, -1] if self.hparams.target_mode == "last" else prediction

    def _is_logging_step(self) -> bool:
        """True on the steps Lightning writes to the loggers (every trainer.log_every_n_steps).

        Each self.log call costs Lightning about half a millisecond of bookkeeping (a quarter of a
        default training step), so step scalars are only produced when they will be written.
        """
        return (self.global_step + 1) % self.trainer.log_every_n_steps == 0

    def on_fit_start(self) -> None:
        use_amp = self.hparams.get("use_amp")  # absent from checkpoints written before it existed
        precision = str(self.trainer.precision)
        if use_amp is not None and use_amp != ("mixed" in precision):
            wanted = "a mixed precision such as '16-mixed' or 'bf16-mixed'" if use_amp else "'32-true'"
            raise OptionError(
                "use_amp",
                f"use_amp={use_amp} but the trainer runs at precision {precision!r}; pass "
                f"{wanted} to create_trainer(precision=...) (trainer.precision=... on the command line), "
                "or leave use_amp unset.",
            )

    def on_train_start(self) -> None:
        # Read once: the trainer re-derives it from the loaders on every access.
        self._total_steps = self.trainer.estimated_stepping_batches
        # A run resumed with a larger trainer.max_epochs/max_steps than its checkpoint was trained for.
        if self.hparams.scheduler in STEP_SCHEDULERS:
            for config in self.trainer.lr_scheduler_configs:
                stretch_remaining_schedule(config.scheduler, schedule_length(self.hparams.scheduler, self._total_steps))

    def training_progress(self) -> float:
        """Share of all training steps done so far; NaN when training has no step limit."""
        total_steps = getattr(self, "_total_steps", math.inf)
        return self.global_step / max(1, total_steps) if math.isfinite(total_steps) else math.nan

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, scalars = self.objective.training_loss(self.scored_prediction, batch, self.training_progress())
        self.train_loss_sum.add_(loss.detach(), alpha=len(batch["x"]))
        self.train_samples += len(batch["x"])
        if self._is_logging_step():
            self.log_dict({f"train/{name}": value for name, value in scalars.items()})
            self.log_dict({"train/loss": loss, "train/lr": self.optimizers().param_groups[0]["lr"]}, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self.carried_state = None  # every epoch walks the streams again from their first chunk

    def on_train_epoch_end(self) -> None:
        if self.train_samples == 0:
            return
        strategy = self.trainer.strategy
        total = strategy.reduce(self.train_loss_sum.clone(), reduce_op="sum")
        samples = strategy.reduce(torch.tensor(float(self.train_samples), device=self.device), reduce_op="sum")
        # Already summed over ranks; sync_dist only tells Lightning so.
        self.log("train/loss_epoch", total / samples, sync_dist=True)
        self.train_loss_sum.zero_()
        self.train_samples = 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after AMP unscaling, so this is the true gradient norm (before clipping).
        if not self._is_logging_step():
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def fused_adamw(self, trainer: pl.Trainer | None = None) -> bool | None:
        """AdamW's `fused` argument for optim.fused when training on `trainer` (default: the attached
        one): True, or None for torch's own path. Raises OptionError where fused=true cannot run."""
        trainer = trainer or self._trainer
        device = trainer.strategy.root_device if trainer is not None else self.device
        return adamw_fused_flag(self.hparams.get("fused", "auto"), device, fused_adamw_blocker(trainer))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # torch's Optimizer.load_state_dict takes `fused` from the saved param groups, so without this
        # a resumed run would update the way its checkpoint's run did, whatever optim.fused says now.
        if self._trainer is None:  # load_from_checkpoint: no optimizer is restored
            return
        fused = self.fused_adamw()
        for optimizer_state in checkpoint.get("optimizer_states", []):
            for group in optimizer_state["param_groups"]:
                group["fused"] = fused

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
        optimizer = adamw(
            self.parameters(),
            hp.learning_rate,
            hp.weight_decay,
            hp.betas,
            hp.eps,
            hp.get("fused", "auto"),
            fused_adamw_blocker(self._trainer),
        )
        total_steps = self.trainer.estimated_stepping_batches if hp.scheduler in STEP_SCHEDULERS else None
        schedule = lr_scheduler_config(
            optimizer,
            hp.scheduler,
            hp.learning_rate,
            hp.warmup_fraction,
            total_steps,
            hp.cycle_momentum,
            hp.plateau_factor,
            hp.plateau_patience,
            hp.min_lr,
        )
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}
