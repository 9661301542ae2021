"""The learning-rate schedules SeamGatedLightningModule offers (`optim.scheduler`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from models.contract import OptionError

SCHEDULERS = ("onecycle", "cosine_warmup", "plateau", "none")
STEP_SCHEDULERS = ("onecycle", "cosine_warmup")  # those that follow the total number of training steps


def check_schedule_options(
    *,
    scheduler: str,
    warmup_fraction: float,
    cycle_momentum: bool,
    betas: tuple[float, float],
    plateau_factor: float,
    plateau_patience: int,
    min_lr: float,
    learning_rate: float,
) -> None:
    """Refuses, in one sentence naming the key, a schedule setting that lr_scheduler_config cannot honour."""
    if scheduler not in SCHEDULERS:
        raise OptionError(
            "scheduler", f"scheduler={scheduler!r} is not allowed; choose one of: {', '.join(SCHEDULERS)}."
        )
    if not 0.0 <= warmup_fraction < 1.0:
        raise OptionError("warmup_fraction", f"warmup_fraction={warmup_fraction} must lie in [0, 1).")
    if scheduler == "onecycle" and cycle_momentum and betas[0] != 0.9:
        raise OptionError(
            "betas",
            f"betas={list(betas)}: onecycle with cycle_momentum=true cycles beta1 between 0.95 and "
            "0.85 in place of betas[0]; set optim.cycle_momentum=false to keep it, or betas[0]=0.9.",
        )
    if not 0.0 < plateau_factor < 1.0:
        raise OptionError("plateau_factor", f"plateau_factor={plateau_factor} must lie in (0, 1).")
    if plateau_patience < 0:
        raise OptionError("plateau_patience", f"plateau_patience={plateau_patience} must be >= 0.")
    if not 0.0 <= min_lr < learning_rate:
        raise OptionError("min_lr", f"min_lr={min_lr} must lie in [0, learning_rate={learning_rate}).")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler_config(
    optimizer: torch.optim.Optimizer,
    scheduler: str,
    learning_rate: float,
    warmup_fraction: float,
    total_steps: float | None = None,
    cycle_momentum: bool = True,
    plateau_factor: float = 0.5,
    plateau_patience: int = 3,
    min_lr: float = 0.0,
) -> dict[str, Any] | None:
    """Lightning's `lr_scheduler` entry for `scheduler` (one of SCHEDULERS), or None for `none`.

    `total_steps` (the trainer's estimated stepping batches) is needed by STEP_SCHEDULERS only;
    `learning_rate` is the peak of `onecycle`; `min_lr` the floor every schedule keeps to (onecycle
    at 0: OneCycleLR's own end, peak / 2.5e5).
    """
    if scheduler == "none":
        return None
    if scheduler == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=plateau_factor, patience=plateau_patience, min_lr=min_lr
        )
        return {"scheduler": plateau, "monitor": "val/loss"}
    total_steps = schedule_length(scheduler, total_steps)
    if scheduler == "onecycle":
        warmup_share = min(max(warmup_fraction, 2.0 / total_steps), 0.5)
        start_lr = learning_rate / 25.0  # OneCycleLR's div_factor
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=learning_rate,
            total_steps=total_steps,
            pct_start=warmup_share,
            cycle_momentum=cycle_momentum,
            final_div_factor=start_lr / min_lr if min_lr else 1e4,
        )
    else:
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(int(warmup_fraction * total_steps), total_steps, min_lr / learning_rate)
        )
    return {"scheduler": schedule, "interval": "step"}


def schedule_length(scheduler: str, total_steps: float | None) -> int:
    """Optimizer steps a step schedule spans: all steps of the fit (trainer.max_epochs/max_steps)."""
    if total_steps is None or not math.isfinite(total_steps):
        raise OptionError(
            "scheduler",
            f"scheduler={scheduler!r} needs a finite number of steps; set trainer.max_epochs or "
            "trainer.max_steps, or use scheduler=plateau or none.",
        )
    # OneCycleLR divides by the length of each phase, so both phases need at least two steps.
    return max(int(total_steps), 4)


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
    # Anything else (e.g. the LR finder's own schedule while tuner.lr_find runs) has no step budget.
    if not isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) or scheduler.total_steps == total_steps:
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
    scheduler._schedule_phases = [
        {**hold, "end_step": float(resumed_at)},
        *(phases or [{**hold, "end_step": float(new_last)}]),
    ]
    scheduler.total_steps = total_steps
