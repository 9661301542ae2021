"""Lightning callbacks that watch training health: `AuditCallback` and `NonFiniteGuard`.

    python train_hydra.py callbacks=audit     # the default callbacks plus AuditCallback

NonFiniteGuard is one of the default callbacks (configs/callbacks/nonfinite_guard.yaml).
"""

from __future__ import annotations

import logging
import math
import statistics
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from audit.gradient_flow import EXPLODING_GRAD_NORM, VANISHING_GRAD_NORM, GradientFlowAuditor, check_gradient_thresholds
from audit.initialization import InitializationAuditor
from audit.memory import MemoryProfiler
from audit.performance_audit import AuditReport, batch_to_device, run_full_audit, write_report
from training.run_checkpoint import RunCheckpoint

log = logging.getLogger(__name__)


def _default_dir(trainer: pl.Trainer, name: str) -> Path:
    return Path(trainer.default_root_dir) / name


def _forked_rng(device: torch.device) -> AbstractContextManager:
    """Restores the CPU (and this CUDA device's) random state on exit, so an audit draws nothing from training."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


class AuditCallback(pl.Callback):
    """Audits training health at the start of training and every `every_n_steps` optimizer steps.

    At the start (before the first step): `run_full_audit` on the first training batch:
    initialisation, gate saturation, gradient flow of one extra forward+backward, data loader
    speed and memory. Every `every_n_steps` steps (step 0 included): the gradients of that very
    step (read after AMP unscaling, before clipping and the optimizer), weight statistics and gate
    saturation on the same first batch, and memory since the previous audit.

    Each audit logs its scalars to every logger under `audit/` and rewrites `report.json` and
    `report.txt` in `dirpath`. The audit's own forward passes run under a forked RNG, so training
    draws the same random numbers (shuffling, dropout) as it would without the callback.

    Args:
        dirpath: directory of report.json and report.txt (default: <default_root_dir>/audit).
        every_n_steps: optimizer steps between audits during training.
        n_dataloader_batches: batches timed by the data loader audit at the start.
        vanishing_threshold, exploding_threshold: gradient-norm bounds of a healthy parameter tensor.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        every_n_steps: int = 500,
        n_dataloader_batches: int = 50,
        vanishing_threshold: float = VANISHING_GRAD_NORM,
        exploding_threshold: float = EXPLODING_GRAD_NORM,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1.")
        if n_dataloader_batches < 1:
            raise ValueError(f"n_dataloader_batches={n_dataloader_batches} must be >= 1.")
        check_gradient_thresholds(vanishing_threshold, exploding_threshold)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every_n_steps = every_n_steps
        self.n_dataloader_batches = n_dataloader_batches
        self.vanishing_threshold = vanishing_threshold
        self.exploding_threshold = exploding_threshold
        self.audits: list[tuple[str, AuditReport]] = []
        self._sample_batch = None
        self._memory: MemoryProfiler | None = None
        self._last_audited_step: int | None = None  # with several optimizers the hook runs once per optimizer
        self._warned: set[str] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = _default_dir(trainer, "audit")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        with _forked_rng(pl_module.device):
            self._sample_batch = batch_to_device(next(iter(loader)), pl_module.device)
            report = run_full_audit(
                pl_module,
                loader,
                pl_module.device,
                sample_batch=self._sample_batch,
                n_batches=self.n_dataloader_batches,
                vanishing_threshold=self.vanishing_threshold,
                exploding_threshold=self.exploding_threshold,
                verbose=False,
            )
        self._record(trainer, "fit start", report)
        self._start_memory(pl_module.device, trainer.global_step)

    def _start_memory(self, device: torch.device, step: int) -> None:
        # A fresh profiler per interval: each audit reports the memory since the previous one.
        # Polling every 0.1 s keeps the sampling thread's share of a training step negligible.
        self._memory = MemoryProfiler(device, poll_interval_s=0.1)
        self._memory.start(f"training from step {step}")

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_audited_step:
            return
        self._last_audited_step = step
        auditor = GradientFlowAuditor(pl_module, self.vanishing_threshold, self.exploding_threshold)
        gradients = auditor.check_gradient_flow()
        with _forked_rng(pl_module.device):
            initialization = InitializationAuditor(pl_module, self._sample_batch).check_initialization()
        self._memory.stop()
        memory = self._memory.report
        self._start_memory(pl_module.device, step)
        self._record(trainer, f"step {step}", AuditReport(initialization, gradients, None, memory))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._memory is not None and self._memory.running:
            self._memory.stop()

    def _record(self, trainer: pl.Trainer, label: str, report: AuditReport) -> None:
        self.audits.append((label, report))
        metrics = {f"audit/{name}": value for name, value in report.scalars().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if trainer.is_global_zero:
            write_report(self.audits, self.dirpath)
            # Each finding is logged once; the reports keep repeating it for as long as it holds.
            for advice in report.recommendations():
                if advice not in self._warned:
                    self._warned.add(advice)
                    log.warning(f"Audit at {label}: {advice}")


def scale_learning_rates(optimizer: torch.optim.Optimizer, schedulers: list, factor: float) -> None:
    """Multiply the learning rate of every param group by `factor`, and the values the schedulers
    recompute it from (`initial_lr`, `max_lr`, `min_lr`, `base_lrs`), so that the drop survives the
    next scheduler step instead of being overwritten by it."""
    for group in optimizer.param_groups:
        for key, value in group.items():
            if key == "lr" or key.endswith("_lr"):
                if isinstance(value, torch.Tensor):
                    value.mul_(factor)
                elif isinstance(value, (int, float)):
                    group[key] = value * factor
    for scheduler in schedulers:
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]


class NonFiniteGuard(pl.Callback):
    """Skips every optimizer step whose training loss is NaN, infinite or a sudden spike, and stops a
    run that keeps failing.

    A step is bad when its loss is non-finite, or (with `spike_factor` set) larger than
    `spike_factor` times the median of the last `spike_window` good losses, once `spike_window // 2`
    of them are known. A bad step's gradients are dropped before the optimizer sees them (torch
    optimizers leave a parameter without a gradient untouched, so weights and optimizer state stay
    as they were), and every learning rate is multiplied by `lr_factor`: a single bad batch costs one
    step and the run recovers. After `patience` bad steps in a row the guard saves an emergency
    checkpoint of the last good weights and stops training with one sentence saying what happened.
    Under DDP a step is bad when it is bad on any rank, so all ranks skip together. With
    `detect_anomaly` on, the backward pass of a NaN loss raises first. `health_record()` is what
    train_hydra.py writes into metrics.json.

    Args:
        lr_factor: factor in (0, 1] applied to the learning rates after each bad step.
        patience: consecutive bad steps that stop training.
        dirpath: directory of the emergency checkpoint (default: <default_root_dir>/checkpoints).
        spike_factor: a loss above this multiple (> 1) of the recent median is a spike; None: no spike check.
        spike_window: good losses the median is taken over (>= 2).
    """

    def __init__(
        self,
        lr_factor: float = 0.5,
        patience: int = 3,
        dirpath: str | Path | None = None,
        spike_factor: float | None = 20.0,
        spike_window: int = 50,
    ) -> None:
        if not 0.0 < lr_factor <= 1.0:
            raise ValueError(f"lr_factor={lr_factor} must lie in (0, 1].")
        if patience < 1:
            raise ValueError(f"patience={patience} must be >= 1.")
        if spike_factor is not None and not spike_factor > 1.0:
            raise ValueError(f"spike_factor={spike_factor} must be > 1 (or null to switch spike detection off).")
        if spike_window < 2:
            raise ValueError(f"spike_window={spike_window} must be >= 2.")
        self.lr_factor = lr_factor
        self.patience = patience
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.spike_factor = spike_factor
        self.spike_window = spike_window
        self.recent_losses: list[float] = []
        self.consecutive_bad_steps = 0
        self.bad_steps: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.emergency_checkpoint: str | None = None
        self._step_loss = 0.0
        self._stop_requested = False

    @property
    def skipped_steps(self) -> int:
        return len(self.bad_steps)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = _default_dir(trainer, "checkpoints")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        # Accumulated micro-batches add up to the step's loss; one bad micro-batch spoils the step.
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._step_loss += float(loss.detach()) / (scaler.get_scale() if scaler is not None else 1.0)

    def _spike_threshold(self) -> float | None:
        if self.spike_factor is None or len(self.recent_losses) < max(2, self.spike_window // 2):
            return None
        # The lower middle value for an even count, as torch.median, without building a tensor each step.
        return self.spike_factor * statistics.median_low(self.recent_losses)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        loss, self._step_loss = self._step_loss, 0.0
        threshold = self._spike_threshold()
        kind = (
            "non_finite" if not math.isfinite(loss) else "spike" if threshold is not None and loss > threshold else None
        )
        if not trainer.strategy.reduce_boolean_decision(kind is not None, all=False):
            self.consecutive_bad_steps = 0
            self.recent_losses = [*self.recent_losses, loss][-self.spike_window :]
            return
        optimizer.zero_grad(set_to_none=True)
        schedulers = [
            config.scheduler for config in trainer.lr_scheduler_configs if config.scheduler.optimizer is optimizer
        ]
        scale_learning_rates(optimizer, schedulers, self.lr_factor)
        self.consecutive_bad_steps += 1
        self.bad_steps.append(
            {
                "step": trainer.global_step,
                "kind": kind or "other_rank",
                "loss": str(loss),
                "spike_threshold": threshold,
                "learning_rate_after": float(optimizer.param_groups[0]["lr"]),
            }
        )
        if self.consecutive_bad_steps < self.patience and trainer.is_global_zero:
            log.warning(
                f"NonFiniteGuard skipped step {trainer.global_step}: the training loss {loss:.4g} was "
                + (
                    "non-finite"
                    if kind == "non_finite"
                    else f"above {threshold:.4g} (x{self.spike_factor:g} "
                    f"the median of the last {len(self.recent_losses)} losses)"
                )
                + f"; learning rates cut x{self.lr_factor:g}."
            )
        self._stop_requested = self.consecutive_bad_steps >= self.patience

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Saved here, after the skipped step has finished, so the checkpoint's loop state is consistent.
        if not self._stop_requested:
            return
        self._stop_requested = False
        path = self.dirpath / f"emergency_step_{trainer.global_step:06d}.ckpt"
        trainer.save_checkpoint(path)
        self.emergency_checkpoint = str(path)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, RunCheckpoint):
                callback.keep_last()  # last.ckpt stays the state from before the bad steps
        learning_rate = trainer.optimizers[0].param_groups[0]["lr"]
        kinds = " or ".join(sorted({step["kind"].replace("_", "-") for step in self.bad_steps[-self.patience :]}))
        self.stop_reason = (
            f"NonFiniteGuard stopped training at step {trainer.global_step}: the training loss was {kinds} for "
            f"{self.consecutive_bad_steps} consecutive steps, each skipped and followed by a learning-rate cut "
            f"x{self.lr_factor:g} (now {float(learning_rate):.3g}); the last good weights are in {path}."
        )
        self.consecutive_bad_steps = 0
        trainer.should_stop = True
        if trainer.is_global_zero:
            log.error(self.stop_reason)

    def health_record(self) -> dict[str, Any]:
        """What the guard did in this run: every skipped step, and why and where it stopped training."""
        return {
            "skipped_steps": self.bad_steps,
            "stop_reason": self.stop_reason,
            "emergency_checkpoint": self.emergency_checkpoint,
        }

    def state_dict(self) -> dict[str, Any]:
        # The loss history decides the next spike, so a resumed run judges its steps as an unbroken one would.
        return {
            "recent_losses": self.recent_losses,
            "bad_steps": self.bad_steps,
            "consecutive_bad_steps": self.consecutive_bad_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recent_losses = list(state_dict["recent_losses"])
        self.bad_steps = list(state_dict["bad_steps"])
        self.consecutive_bad_steps = state_dict["consecutive_bad_steps"]
