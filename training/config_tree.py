"""How a run shows its config and labels itself: the rich config tree and the tags a multirun needs.

`print_config_tree` prints the composed config at the start of a run and saves the same tree as
`config_tree.log` in the run dir (as the lightning-hydra-template does); `check_tags` stops a
multirun without tags at its first job, before any training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

CONFIG_TREE_FILE = "config_tree.log"
# Printed first, in this order; the other top-level keys follow in config order.
LEADING_KEYS = ("data", "model", "optim", "objective", "callbacks", "logger", "trainer", "paths")
log = logging.getLogger(__name__)


def config_tree(cfg: DictConfig) -> rich.tree.Tree:
    """One branch per top-level key of `cfg` (the hydra node left out), each value as resolved YAML."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [key for key in LEADING_KEYS if key in cfg]
    keys += [key for key in cfg if key not in keys and key != "hydra"]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(key, style="bold", guide_style="dim").add(rich.syntax.Syntax(text, "yaml"))
    return tree


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the config tree; with `save_to`, also write it there as plain text (one process of a
    DDP run does both)."""
    tree = config_tree(cfg)
    rich.print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as file:
            rich.print(tree, file=file)


def check_tags(cfg: DictConfig, multirun: bool) -> None:
    """Refuse a multirun whose `tags` are empty: a sweep's runs are found again by their tags.

    The template asks for tags on stdin; a sweep may run where nobody can answer (CI, SLURM), so
    it fails at once instead, in one sentence. A single run keeps running with a warning.
    """
    if cfg.get("tags"):
        return
    if multirun:
        raise ValueError("tags is empty; a multirun needs tags to find its runs later, e.g. tags=[lstm_sweep].")
    log.warning("tags is empty; add tags=[...] to find this run again in the loggers.")
