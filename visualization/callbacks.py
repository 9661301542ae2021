"""`GateHeatmapCallback`: gate figures of a fixed validation slice while a model trains.

python train_hydra.py callbacks=heatmap    # the default callbacks plus this one
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn

from analysis.statistics import gate_transition_statistics
from training.checkpoint_io import atomic_write
from visualization.gate_slices import collect_slice_diagnostics, draw_slice_figures, gate_series
from visualization.influence_maps import influence_maps, plot_influence_maps, sample_window


class GateHeatmapCallback(pl.Callback):
    """Every `every_n_epochs` validation epochs of fit, draws the gate heatmap, the parity-energy
    trajectory and the gate-vs-transition statistics of one fixed, contiguous validation slice.

    The slice is the same every time (see `collect_slice_diagnostics`): `slice_length` consecutive
    validation steps, each read through the window that ends at it. The model runs in eval mode
    without gradients and its mode is restored, so training is unchanged. The final weights are
    drawn at the end of fit when the last validation was not.

    Outputs: PNGs in `<dirpath>/<epoch_NNN | final>/`, every drawing's diagnostics in
    `<dirpath>/diagnostics.pt` (a dict of tensors; `torch.load(..., weights_only=True)`), the
    figures under `gates/` in TensorBoard and the statistics as `gates/*` scalars in every logger.

    Args:
        dirpath: directory of figures and diagnostics.pt (default: <default_root_dir>/figures).
        every_n_epochs: validation epochs between drawings.
        slice_length: validation steps drawn.
        slice_offset: steps between the first full validation window and the slice.
        influence_maps: also draw `influence_maps.png` (visualization/influence_maps.py) of the first
            validation window at each drawing: attention per layer and head, z2_delta's exact map, or
            the gradient map; drawn for models without gates too.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        every_n_epochs: int = 5,
        slice_length: int = 500,
        slice_offset: int = 0,
        influence_maps: bool = False,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 1.")
        if slice_length < 1:
            raise ValueError(f"slice_length={slice_length} must be >= 1.")
        if slice_offset < 0:
            raise ValueError(f"slice_offset={slice_offset} must be >= 0.")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every_n_epochs = every_n_epochs
        self.slice_length = slice_length
        self.slice_offset = slice_offset
        self.influence_maps = influence_maps
        self.drawings: dict[str, dict[str, torch.Tensor]] = {}
        self._validations = 0
        self._drawn_at_step: int | None = None
        self._has_gates = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "figures"
        datamodule = trainer.datamodule
        if not all(hasattr(datamodule, name) for name in ("sequence", "bounds", "history_length")):
            raise ValueError(
                f"GateHeatmapCallback needs a DataModule that generates its sequence (data=antipodal); "
                f"{type(datamodule).__name__} has no sequence, bounds and history_length."
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._validations += 1
        if self._validations % self.every_n_epochs == 0:
            self._draw(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}", f"epoch {trainer.current_epoch}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validations and self._drawn_at_step != trainer.global_step:
            self._draw(trainer, pl_module, "final", f"final weights (step {trainer.global_step})")

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str, label: str) -> None:
        self._drawn_at_step = trainer.global_step
        # The slice needs no other rank, so one process draws and writes.
        if not trainer.is_global_zero:
            return
        if self.influence_maps:
            maps = influence_maps(pl_module.model, sample_window(trainer.datamodule).to(pl_module.device))
            figure = plot_influence_maps(
                maps,
                self.dirpath / tag / "influence_maps.png",
                f"{pl_module.hparams.model_type}, {label}: first validation window",
            )
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(
                        "gates/influence_maps", figure, global_step=trainer.global_step, close=False
                    )
        if not self._has_gates:
            return
        data = collect_slice_diagnostics(pl_module, trainer.datamodule, self.slice_length, self.slice_offset)
        if not gate_series(data.diagnostics):
            self._has_gates = False
            rank_zero_warn(
                f"GateHeatmapCallback: model {pl_module.hparams.model_type} returns no gate diagnostics; "
                "no gate figures are drawn for this run."
            )
            return
        figures = draw_slice_figures(data, self.dirpath / tag, f"{pl_module.hparams.model_type}, {label}")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, figure in figures.items():
                    logger.experiment.add_figure(f"gates/{name}", figure, global_step=trainer.global_step, close=False)
        if "gate_statistics" in figures:
            statistics = gate_transition_statistics(data.diagnostics["gate"], data.transition)
            metrics = {
                f"gates/{name}": getattr(statistics, name)
                for name in ("welch_t", "welch_p", "cohens_d", "auroc", "mean_transition", "mean_stable")
            }
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self._save_diagnostics(tag, data.to_dict())

    def _save_diagnostics(self, tag: str, drawing: dict[str, Any]) -> None:
        self.drawings[tag] = drawing.pop("diagnostics")
        content = {**drawing, "diagnostics": self.drawings}
        path = self.dirpath / "diagnostics.pt"
        atomic_write(path, lambda file: torch.save(content, file))
