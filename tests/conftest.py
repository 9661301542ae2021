"""Shared fixtures: the real Hydra config, composed the way train_hydra.py composes it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train_hydra import CONFIG_DIR  # noqa: E402


def compose_config(output_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The composed run config with its output redirected to `output_dir`, Hydra state set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def make_config(tmp_path):
    """compose_config bound to this test's tmp dir."""
    return lambda overrides=(): compose_config(tmp_path, overrides)
