"""`TrainingCurvesCallback`: the training curves as a PNG, redrawn at the end of every validation.

    python train_hydra.py "callbacks=[default,training_curves]"    # <run dir>/figures/training_curves.png

The same panels as `visualization/plot_runs.py` draws after the fact (training loss, validation MSE
against predicting 0, MSE at transition and stable steps, learning rate, gradient norm), read from
the running training loop instead of the TensorBoard files, so it works with any logger or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from visualization.plot_runs import CURVES, DPI, Run, plot_training_curves

VALIDATION_LOSS = ("val/loss", "validation loss", True)  # drawn where the task has no val/mse (tokens)


class TrainingCurvesCallback(pl.Callback):
    """Collects the training loss of every step, the learning rate and gradient norm (before clipping)
    every `trainer.log_every_n_steps` steps and the validation metrics of every validation, and redraws `<dirpath>/<filename>` after each
    validation of fit (not the sanity check).

    The PNG is written to a temporary file and renamed into place, so a viewer never reads a half
    written image. The collected curves are part of the checkpoint, so a resumed run continues them.

    Args:
        dirpath: directory of the PNG (default: <default_root_dir>/figures).
        filename: name of the PNG.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "training_curves.png") -> None:
        if not filename.endswith(".png"):
            raise ValueError(f"filename={filename!r} must end in .png.")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "figures"

    def _record(self, tag: str, step: int, value: Any) -> None:
        self.scalars.setdefault(tag, []).append((step, float(value)))

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # Every log_every_n_steps steps, as the loggers get them: a norm costs a pass over all gradients.
        if trainer.global_step % trainer.log_every_n_steps == 0:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                self._record("train/grad_norm", trainer.global_step, torch.nn.utils.get_total_norm(grads))
            self._record("train/lr", trainer.global_step, optimizer.param_groups[0]["lr"])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._record("train/loss", trainer.global_step, loss.detach())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        for tag, value in trainer.callback_metrics.items():
            if tag.startswith("val/") and value.numel() == 1:
                self._record(tag, trainer.global_step, value)
        if trainer.is_global_zero:
            self.draw(title_model=pl_module.hparams.get("model_type", ""))

    def draw(self, title_model: str = "") -> Path:
        """Redraw the PNG from the curves collected so far; returns its path."""
        scalars = {
            tag: (np.array([s for s, _ in points]), np.array([v for _, v in points]))
            for tag, points in self.scalars.items()
        }
        curves = CURVES if "val/mse" in scalars else [CURVES[0], VALIDATION_LOSS, *CURVES[1:]]
        run = Run(path=self.dirpath, scalars=scalars, metrics={}, overrides={}, label=title_model or "this run")
        figure = plot_training_curves([run], curves=curves)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.filename}.partial.png")
        figure.savefig(partial, dpi=DPI)
        partial.replace(self.path)
        return self.path

    def state_dict(self) -> dict[str, Any]:
        return {"scalars": {tag: [list(point) for point in points] for tag, points in self.scalars.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scalars = {tag: [tuple(point) for point in points] for tag, points in state_dict["scalars"].items()}
