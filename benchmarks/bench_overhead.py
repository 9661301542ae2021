"""The framework's overhead: epochs of `train_hydra.train` against a plain PyTorch loop doing the same work.

    python benchmarks/bench_overhead.py                       # z2_delta, default and long-window configs
    python benchmarks/bench_overhead.py --model lstm --epochs 8

One run of `train_hydra.train` (Lightning, the composed Hydra config with `callbacks=none`,
`logger=none`, no validation) carries a callback that, after each of its training epochs, runs one
epoch of a hand-written loop on its own copy of the same model, data, AdamW, OneCycle schedule and
gradient clipping. Lightning's epoch is timed from its on_train_epoch_start to its
on_train_epoch_end, the plain epoch right after it. The epochs alternate in one process, so a burst
of background load on a shared machine slows both of a pair alike; the overhead is the median over
the pairs (after one warm-up pair) of Lightning's epoch time over the plain epoch's, minus one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from models import build_model

INPUT_DIM, HIDDEN_DIM = 4, 64

# The configs whose framework overhead is measured, with their targets: the default one, and long
# next-step windows (fewer, longer steps, where any per-step cost of the framework must vanish).
OVERHEAD_CONFIGS = {
    "default (H=10, last)": ({}, 0.10),
    "long window (H=500, next_step)": ({"history_length": 500, "target_mode": "next_step"}, 0.05),
}

# The PlainLoopAlongside of the current run (Hydra instantiates it from the config).
RUNS: list[PlainLoopAlongside] = []


class PlainLoopAlongside(pl.Callback):
    """After every Lightning training epoch, one epoch of a plain loop doing the same work; both timed.

    The plain side mirrors configs/optimizer/adamw.yaml, configs/scheduler/onecycle.yaml and
    trainer.gradient_clip_val of the default config: AdamW (lr 3e-3, weight decay 1e-4), OneCycle
    over all epochs, clipping the gradient norm at 1."""

    def __init__(self, model_name: str, epochs: int, data_options: dict) -> None:
        from data.antipodal import AntipodalDataModule

        torch.manual_seed(0)
        datamodule = AntipodalDataModule(**dict(data_options))
        datamodule.setup()
        self.last_only = datamodule.target_mode == "last"
        self.loader = datamodule.train_dataloader()
        self.samples = len(self.loader.dataset)
        self.model = build_model(model_name, input_dim=INPUT_DIM, output_dim=INPUT_DIM, hidden_dim=HIDDEN_DIM)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-3, weight_decay=1e-4)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=3e-3, total_steps=len(self.loader) * epochs
        )
        self.lightning_seconds: list[float] = []
        self.plain_seconds: list[float] = []
        self._start = 0.0
        RUNS.append(self)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lightning_seconds.append(time.perf_counter() - self._start)
        self.plain_seconds.append(self._plain_epoch())

    def _plain_epoch(self) -> float:
        start = time.perf_counter()
        self.model.train()
        for batch in self.loader:
            self.optimizer.zero_grad(set_to_none=True)
            prediction = self.model(batch["x"])
            loss = nn.functional.mse_loss(prediction[:, -1] if self.last_only else prediction, batch["y"])
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.schedule.step()
        return time.perf_counter() - start


def paired_epochs(model_name: str, epochs: int, data_options: dict, output_dir: Path) -> PlainLoopAlongside:
    """Train `1 + epochs` epochs through train_hydra.train with a PlainLoopAlongside; return it."""
    from train_hydra import compose_config, train

    total = 1 + epochs
    options = ",".join(f"{key}:{value}" for key, value in data_options.items())
    cfg = compose_config(
        [
            f"model={model_name}",
            f"trainer.max_epochs={total}",
            "trainer.accelerator=cpu",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "callbacks=none",
            "logger=none",
            "test=false",
            f"+callbacks.plain_loop._target_={__name__}.PlainLoopAlongside",
            f"+callbacks.plain_loop.model_name={model_name}",
            f"+callbacks.plain_loop.epochs={total}",
            f"+callbacks.plain_loop.data_options={{{options}}}",
            *(f"data.{key}={value}" for key, value in data_options.items()),
        ],
        output_dir,
    )
    RUNS.clear()
    train(cfg)
    return RUNS[-1]


def print_overhead(model_name: str, epochs: int) -> None:
    print(f"\n## Framework overhead, {model_name} on antipodal (B=64), {epochs} timed epoch pairs, interleaved\n")
    print("| config | plain loop samples/s | train_hydra.train samples/s | overhead (median, range) | target |")
    print("|---|---:|---:|---:|---|")
    for label, (data_options, target) in OVERHEAD_CONFIGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            run = paired_epochs(model_name, epochs, data_options, Path(tmp))
        pairs = list(zip(run.lightning_seconds[1:], run.plain_seconds[1:]))  # the first pair warms up
        ratios = sorted(lightning / plain - 1 for lightning, plain in pairs)
        overhead = statistics.median(ratios)
        lightning_s = statistics.median(lightning for lightning, _ in pairs)
        plain_s = statistics.median(plain for _, plain in pairs)
        print(
            f"| {label} | {run.samples / plain_s:,.0f} | {run.samples / lightning_s:,.0f} | "
            f"{100 * overhead:+.1f}% ({100 * ratios[0]:+.1f}% .. {100 * ratios[-1]:+.1f}%) | "
            f"<= {100 * target:.0f}% {'PASS' if overhead <= target else 'MISS'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="z2_delta", help="registered model that reads vectors")
    parser.add_argument("--epochs", type=int, default=5, help="timed epoch pairs per config")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# cpu: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32")
    print_overhead(args.model, args.epochs)


if __name__ == "__main__":
    main()
