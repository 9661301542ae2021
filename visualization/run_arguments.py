"""The options by which a post-hoc command picks a finished run: `--experiment RUN` and `--checkpoint CKPT`.

Either one is enough: a checkpoint's run dir is the nearest parent holding .hydra/config.yaml, and a
run's checkpoint is the one its metrics.json evaluated, else checkpoints/last.ckpt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train_hydra import ConfigError, TrainedRun, load_run, run_dir_of


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experiment",
        type=Path,
        default=None,
        help="run directory (holds .hydra/config.yaml; default: the one --checkpoint lies in)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint to load (default: the one metrics.json evaluated, else checkpoints/last.ckpt)",
    )


def load_chosen_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainedRun:
    """The run the options name, with `args.experiment` filled in; a bad choice ends in `parser.error`."""
    if args.experiment is None and args.checkpoint is None:
        parser.error("pass --experiment RUN, --checkpoint CKPT or both.")
    try:
        args.experiment = args.experiment or run_dir_of(args.checkpoint)
        return load_run(args.experiment, args.checkpoint)
    except ConfigError as error:
        parser.error(str(error))
