"""The `tuner` config switches: Lightning's batch-size and learning-rate finders, run on the run's
own trainer, model and data before fit, with what they find applied to the run.

    python train_hydra.py tuner.lr_find=true            # plot: <run>/lr_find.png
    python train_hydra.py tuner.batch_size_find=true

The batch size is found first (the best learning rate depends on it). The values found are
logged, written to `<run>/tuner.json` and returned for metrics.json; a run resumed in its own dir
reuses them instead of searching again, so it continues with the settings it was trained with.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # the plot is written to a file; no display is needed
import matplotlib.pyplot as plt
import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner

TUNER_FILE = "tuner.json"
LR_PLOT_FILE = "lr_find.png"
log = logging.getLogger(__name__)


def tune(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    options: dict[str, Any],
    run_dir: Path,
    resuming: bool,
) -> dict[str, float]:
    """Run the finders that `options` (the `tuner` config) switches on and apply their results to
    `module.hparams.learning_rate` and `datamodule.batch_size`; return what was applied."""
    if not (options.get("lr_find") or options.get("batch_size_find")):
        return {}
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / TUNER_FILE
    if resuming:
        if not saved.is_file():
            log.info("tuner: resuming without a tuner.json in the run dir, so the configured values are kept.")
            return {}
        found = json.loads(saved.read_text())
        log.info(f"tuner: resuming with the values found when the run started: {found}.")
    else:
        found = find(trainer, module, datamodule, options, run_dir)
        saved.write_text(json.dumps(found, indent=2))
    apply(found, module, datamodule)
    for logger in trainer.loggers:
        logger.log_hyperparams({f"tuner/{name}": value for name, value in found.items()})
    return found


def find(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    options: dict[str, Any],
    run_dir: Path,
) -> dict[str, float]:
    tuner = Tuner(trainer)
    found: dict[str, float] = {}
    if options.get("batch_size_find"):
        # The trials share one optimiser and schedule across growing batches, so a schedule laid out
        # over the run's steps (onecycle) would be stepped past its end: they test memory, not the LR.
        scheduler, module.hparams.scheduler = module.hparams.scheduler, "none"
        try:
            batch_size = tuner.scale_batch_size(
                module,
                datamodule=datamodule,
                mode="power",
                init_val=datamodule.batch_size,
                steps_per_trial=options["batch_size_steps_per_trial"],
                max_val=options["batch_size_max"],
            )
        finally:
            module.hparams.scheduler = scheduler
        found["batch_size"] = int(batch_size)
        datamodule.batch_size = int(batch_size)  # the finder sets it too; this keeps it if it gave up early
        log.info(f"tuner: batch-size finder picked data.batch_size={batch_size}.")
    if options.get("lr_find"):
        finder = tuner.lr_find(
            module,
            datamodule=datamodule,
            min_lr=options["lr_find_min_lr"],
            max_lr=options["lr_find_max_lr"],
            num_training=options["lr_find_num_training"],
            update_attr=False,
        )
        suggestion = finder.suggestion() if finder is not None else None
        if suggestion is None:
            raise ValueError(
                "tuner.lr_find stopped after too few steps to suggest a learning rate; its "
                "tuner.lr_find_num_training steps must fit in trainer.max_epochs epochs of training "
                "batches, and it stops early where the loss diverges (lower tuner.lr_find_max_lr)."
            )
        figure = finder.plot(suggest=True)
        figure.savefig(run_dir / LR_PLOT_FILE, dpi=100)
        plt.close(figure)
        found["learning_rate"] = float(suggestion)
        log.info(f"tuner: LR finder suggests optim.learning_rate={suggestion:.3g} (plot: {run_dir / LR_PLOT_FILE}).")
    return found


def apply(found: dict[str, float], module: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
    if "batch_size" in found:
        datamodule.batch_size = int(found["batch_size"])
    if "learning_rate" in found:
        # configure_optimizers reads hparams, and the checkpoints record them.
        module.hparams.learning_rate = found["learning_rate"]
