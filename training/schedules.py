"""The learning-rate schedules SeamGatedLightningModule offers (`optim.scheduler`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from models.contract import OptionError

SCHEDULERS = ("onecycle", "cosine_warmup", "plateau", "none")
STEP_SCHEDULERS = ("onecycle", "cosine_warmup")  # those that follow the total number of training steps


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler_config(optimizer: torch.optim.Optimizer, scheduler: str, learning_rate: float,
                        warmup_fraction: float, total_steps: float | None = None) -> dict[str, Any] | None:
    """Lightning's `lr_scheduler` entry for `scheduler` (one of SCHEDULERS), or None for `none`.

    `total_steps` (the trainer's estimated stepping batches) is needed by STEP_SCHEDULERS only;
    `learning_rate` is the peak of `onecycle`.
    """
    if scheduler == "none":
        return None
    if scheduler == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
        return {"scheduler": plateau, "monitor": "val/loss"}
    if total_steps is None or not math.isfinite(total_steps):
        raise OptionError(
            "scheduler", f"scheduler={scheduler!r} needs a finite number of steps; set trainer.max_epochs or "
            "trainer.max_steps, or use scheduler=plateau or none."
        )
    # OneCycleLR divides by the length of each phase, so both phases need at least two steps.
    total_steps = max(int(total_steps), 4)
    if scheduler == "onecycle":
        warmup_share = min(max(warmup_fraction, 2.0 / total_steps), 0.5)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=learning_rate, total_steps=total_steps, pct_start=warmup_share
        )
    else:
        warmup = int(warmup_fraction * total_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total_steps))
    return {"scheduler": schedule, "interval": "step"}
