"""The framework's overhead: `train_hydra.train` against a plain PyTorch loop doing the same work.

    python benchmarks/bench_overhead.py                       # z2_delta, default and long-window configs
    python benchmarks/bench_overhead.py --model lstm --epochs 8
    python benchmarks/bench_overhead.py --overrides trainer.log_every_n_steps=10   # what a setting costs
    python benchmarks/bench_overhead.py --overrides callbacks=default logger=tensorboard \
        trainer.enable_progress_bar=true callbacks.early_stopping.monitor=train/loss_epoch \
        callbacks.model_checkpoint.monitor=train/loss_epoch    # with the default callbacks and logger

One run of `train_hydra.train` (Lightning, the composed Hydra config with `callbacks=none`,
`logger=none`, no validation) carries a callback that, after each of its training steps, runs one
step of a hand-written loop on its own copy of the same model (from the Lightning model's weights),
data (its own loader of the run's DataModule), AdamW, OneCycle schedule and gradient clipping. The
two loops alternate step by step in one process, so a burst of background load on a shared machine
slows both alike. Lightning's time is everything between the plain steps, from its
on_train_epoch_start to its on_train_epoch_end (its hooks, logging steps and batch fetching
included); the plain time is the plain steps' (their batch fetching included). The overhead of an
epoch is Lightning's time over the plain time, minus one; the benchmark prints the median over the
epochs after one warm-up epoch.

A second run trains the same model with a bare LightningModule (a training_step and
configure_optimizers, nothing else) on a pl.Trainer with no callbacks, logger or checkpointing,
against its own plain loop the same way: the floor that Lightning's loop itself costs, so the
table separates Lightning's overhead from what the framework adds on top.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from benchmarks.cli import positive_int, trained_vector_models
from models import build_model
from training.floating_point import FlushDenormals
from training.host_memory import KeepFreedMemory
from training.optimizers import adamw

INPUT_DIM, HIDDEN_DIM = 4, 64

# The configs whose framework overhead is measured, with their targets: the default one, and long
# next-step windows (fewer, longer steps, where any per-step cost of the framework must vanish).
OVERHEAD_CONFIGS = {
    "default (H=10, last)": ({}, 0.10),
    "long window (H=500, next_step)": ({"history_length": 500, "target_mode": "next_step"}, 0.05),
}

# The PlainLoopAlongside of the current run (Hydra instantiates it from the config).
RUNS: list[PlainLoopAlongside] = []


def seeded_model(model_name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(model_name, input_dim=INPUT_DIM, output_dim=INPUT_DIM, hidden_dim=HIDDEN_DIM)


def window_loss(model: nn.Module, batch: dict[str, torch.Tensor], last_only: bool) -> torch.Tensor:
    """The MSE the default objective takes: on the last step (target_mode=last) or on every step."""
    prediction = model(batch["x"])
    return nn.functional.mse_loss(prediction[:, -1] if last_only else prediction, batch["y"])


def adamw_onecycle(model: nn.Module, total_steps: int, fused: bool | str):
    """The `optim` settings of configs/config.yaml: AdamW (fused as optim.fused says), OneCycle with
    warmup_fraction 0.1."""
    optimizer = adamw(model.parameters(), 3e-3, 1e-4, (0.9, 0.999), 1e-8, fused)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=total_steps, pct_start=0.1
    )


class PlainLoopAlongside(pl.Callback):
    """After every Lightning training step, one step of a plain loop doing the same work; both timed.

    The plain side mirrors the `optim` settings and trainer.gradient_clip_val of the default
    config: AdamW (lr 3e-3, weight decay 1e-4, the run's optim.fused), OneCycle over all epochs with
    10 % warmup, clipping the gradient norm at 1. It runs inside the Lightning run, so under its
    trainer.flush_denormal."""

    def __init__(self, epochs: int, fused: bool | str) -> None:
        self.epochs, self.fused = epochs, fused
        self.lightning_seconds: list[float] = []  # per epoch
        self.plain_seconds: list[float] = []
        self._batches = iter(())
        self._resumed = 0.0  # when Lightning last got the process back from the plain loop
        RUNS.append(self)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A copy of the run's model and its own loader of the run's DataModule: the same weights and
        # data on both sides. Models that train along different trajectories can run the same
        # kernels at different speeds (measured: 1 ms, 5 %, of a z2_seam long-window forward).
        self.model = copy.deepcopy(pl_module.model)
        self.loader = trainer.datamodule.train_dataloader()
        self.samples = len(self.loader.dataset)
        self.last_only = trainer.datamodule.target_mode == "last"
        self.optimizer, self.schedule = adamw_onecycle(self.model, len(self.loader) * self.epochs, self.fused)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lightning_seconds.append(0.0)
        self.plain_seconds.append(0.0)
        self._resumed = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        paused = time.perf_counter()
        self.lightning_seconds[-1] += paused - self._resumed
        self._plain_step()
        self._resumed = time.perf_counter()
        self.plain_seconds[-1] += self._resumed - paused

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lightning_seconds[-1] += time.perf_counter() - self._resumed

    def _plain_step(self) -> None:
        batch = next(self._batches, None)
        if batch is None:  # a new epoch of the plain loop's own loader
            self.model.train()
            self._batches = iter(self.loader)
            batch = next(self._batches)
        self.optimizer.zero_grad(set_to_none=True)
        window_loss(self.model, batch, self.last_only).backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()


class BareLightningModule(pl.LightningModule):
    """Only what pl.Trainer needs to do the plain loop's work: the floor of Lightning's own loop."""

    def __init__(self, model_name: str, last_only: bool, fused: bool | str) -> None:
        super().__init__()
        self.model = seeded_model(model_name)
        self.last_only = last_only
        self.fused = fused

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return window_loss(self.model, batch, self.last_only)

    def configure_optimizers(self):
        optimizer, schedule = adamw_onecycle(self.model, self.trainer.estimated_stepping_batches, self.fused)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def framework_epochs(
    model_name: str, epochs: int, data_options: dict, output_dir: Path, overrides: list[str]
) -> PlainLoopAlongside:
    """Train `1 + epochs` epochs through train_hydra.train, with the Hydra `overrides` and a
    PlainLoopAlongside; return it."""
    from train_hydra import compose_config, train

    total = 1 + epochs
    settings = {
        "model": model_name,
        "trainer.max_epochs": total,
        "trainer.accelerator": "cpu",
        "trainer.limit_val_batches": 0,
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        "callbacks": "none",
        "logger": "none",
        "test": "false",
        **{f"data.{key}": value for key, value in data_options.items()},
    }
    # An override of a key set here (e.g. callbacks=default) replaces that setting: Hydra refuses a key given twice.
    others = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in settings:
            settings[key] = value
        else:
            others.append(override)
    cfg = compose_config(
        [
            *(f"{key}={value}" for key, value in settings.items()),
            *others,
            f"+callbacks.plain_loop._target_={__name__}.PlainLoopAlongside",
            f"+callbacks.plain_loop.epochs={total}",
            "+callbacks.plain_loop.fused=${optim.fused}",
        ],
        output_dir,
    )
    RUNS.clear()
    train(cfg)
    return RUNS[-1]


def bare_lightning_epochs(
    model_name: str, epochs: int, data_options: dict, output_dir: Path, fused: bool | str, keep_freed_memory: bool
) -> PlainLoopAlongside:
    """Train `1 + epochs` epochs of a BareLightningModule with a PlainLoopAlongside, both with AdamW
    fused as `fused` says, with glibc keeping freed memory where `keep_freed_memory`; return it."""
    from data.antipodal import AntipodalDataModule

    total = 1 + epochs
    plain = PlainLoopAlongside(total, fused)
    datamodule = AntipodalDataModule(**data_options)
    trainer = pl.Trainer(
        default_root_dir=output_dir,
        max_epochs=total,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # The floating-point mode and allocator setting of the train_hydra.train run.
        callbacks=[plain, FlushDenormals(), *([KeepFreedMemory()] if keep_freed_memory else [])],
    )
    last_only = datamodule.target_mode == "last"
    trainer.fit(BareLightningModule(model_name, last_only, fused), datamodule=datamodule)
    return plain


def overhead(run: PlainLoopAlongside) -> tuple[float, float, float, float, float]:
    """(median, lowest, highest) overhead over the timed epochs, Lightning's samples/s, and the
    median of Lightning's extra time per step in microseconds."""
    pairs = list(zip(run.lightning_seconds[1:], run.plain_seconds[1:]))  # the first epoch warms up
    ratios = sorted(lightning / plain - 1 for lightning, plain in pairs)
    samples_per_second = run.samples / statistics.median(lightning for lightning, _ in pairs)
    extra_us = 1e6 * statistics.median(lightning - plain for lightning, plain in pairs) / len(run.loader)
    return statistics.median(ratios), ratios[0], ratios[-1], samples_per_second, extra_us


def print_overhead(model_name: str, epochs: int, overrides: list[str]) -> None:
    from train_hydra import compose_config

    settings = f", overrides: {' '.join(overrides)}" if overrides else ""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(overrides, tmp)
    fused = cfg.optim.fused  # the bare and plain loops update alike
    keep_freed_memory = cfg.trainer.keep_freed_memory
    print(
        f"\n## Framework overhead, {model_name} on antipodal (B=64), {epochs} timed epochs, steps interleaved"
        f"{settings}\n"
    )
    print(
        "| config | plain loop samples/s | bare Lightning samples/s (overhead, extra per step) | "
        "train_hydra.train samples/s | overhead (median, range) | extra per step | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, (data_options, target) in OVERHEAD_CONFIGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            bare = bare_lightning_epochs(model_name, epochs, data_options, Path(tmp) / "bare", fused, keep_freed_memory)
            run = framework_epochs(model_name, epochs, data_options, Path(tmp) / "framework", overrides)
        plain_samples_per_second = run.samples / statistics.median(run.plain_seconds[1:])
        bare_overhead, _, _, bare_samples_per_second, bare_extra_us = overhead(bare)
        median, lowest, highest, samples_per_second, extra_us = overhead(run)
        print(
            f"| {label} | {plain_samples_per_second:,.0f} | {bare_samples_per_second:,.0f} "
            f"({100 * bare_overhead:+.1f}%, {bare_extra_us:,.0f} us) | {samples_per_second:,.0f} | "
            f"{100 * median:+.1f}% ({100 * lowest:+.1f}% .. {100 * highest:+.1f}%) | {extra_us:,.0f} us | "
            f"<= {100 * target:.0f}% {'PASS' if median <= target else 'MISS'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="z2_delta", choices=trained_vector_models(), help="registered model that reads vectors"
    )
    parser.add_argument("--epochs", type=positive_int, default=5, help="timed epochs per config")
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="Hydra overrides of the train_hydra.train run, e.g. trainer.log_every_n_steps=10 (each replaces the benchmark's own setting of that key)",
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# cpu: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32")
    print_overhead(args.model, args.epochs, args.overrides)


if __name__ == "__main__":
    main()
