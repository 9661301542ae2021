"""Adaptive gradient clipping (the seeds' "dynamic gradient clipping"): clip each step's gradient to a
percentile of the recent gradient-norm history instead of a fixed norm.

    python train_hydra.py "callbacks=[default,adaptive_gradient_clip]"
    python train_hydra.py "callbacks=[default,adaptive_gradient_clip]" callbacks.adaptive_gradient_clip.percentile=95

A fixed `gradient_clip_val` must be tuned to the model's gradient scale, which changes over training.
Here the threshold follows the scale: a step whose total norm lies above the `percentile`-th
percentile of the last `history` steps' norms is scaled down to that percentile, so a rare spike is
cut to a typical size while ordinary steps pass untouched. Norms enter the history before clipping,
so a clipped spike does not lower the threshold of later steps.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch


class GradientNormHistory:
    """The last `history` total gradient norms and the clipping rule they define.

    Args:
        percentile: in (0, 100]; the threshold is this percentile of the history.
        history: how many recent norms the threshold reads.
        min_history: norms collected before any clipping (the threshold of too few norms is noise).
    """

    def __init__(self, percentile: float = 90.0, history: int = 100, min_history: int = 10) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile={percentile} must lie in (0, 100].")
        if history < 1:
            raise ValueError(f"history={history} must be >= 1.")
        if not 1 <= min_history <= history:
            raise ValueError(f"min_history={min_history} must lie in [1, history={history}].")
        self.percentile, self.min_history = percentile, min_history
        self.norms: deque[float] = deque(maxlen=history)

    def threshold(self) -> float | None:
        """The current clipping norm, or None while fewer than min_history norms are known."""
        if len(self.norms) < self.min_history:
            return None
        return float(torch.quantile(torch.tensor(list(self.norms), dtype=torch.float64), self.percentile / 100.0))

    def clip(self, parameters: list[torch.nn.Parameter]) -> tuple[float, float | None]:
        """Clip the gradients of `parameters` in place; returns (norm before clipping, threshold used).

        A non-finite norm is neither clipped nor recorded (NonFiniteGuard skips such steps).
        """
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return 0.0, None
        norm = float(torch.nn.utils.get_total_norm(grads))
        if not torch.isfinite(torch.tensor(norm)):
            return norm, None
        threshold = self.threshold()
        if threshold is not None and norm > threshold:
            torch.nn.utils.clip_grads_with_norm_(parameters, threshold, torch.tensor(norm))
        self.norms.append(norm)
        return norm, threshold


class AdaptiveGradientClipping(pl.Callback):
    """Clips every optimizer step's gradients to a percentile of the recent norm history
    (GradientNormHistory), after AMP unscaling and before the trainer's own `gradient_clip_val`
    (set `trainer.gradient_clip_val=null` to clip adaptively only).

    Logs `train/grad_clip_threshold` and `train/grad_clipped` (1 when the step was clipped) on
    logging steps. The history is part of the checkpoint, so a resumed run clips as the uninterrupted
    one would.
    """

    def __init__(self, percentile: float = 90.0, history: int = 100, min_history: int = 10) -> None:
        self.norms = GradientNormHistory(percentile, history, min_history)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        norm, threshold = self.norms.clip(parameters)
        if threshold is not None and (trainer.global_step + 1) % trainer.log_every_n_steps == 0:
            pl_module.log_dict({"train/grad_clip_threshold": threshold, "train/grad_clipped": float(norm > threshold)})

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms.norms)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.norms.norms.clear()
        self.norms.norms.extend(state_dict["norms"])
