"""Shared fixtures: the real Hydra config, composed the way train_hydra.py composes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from train_hydra import compose_config, config_without_hydra, train


def train_like_the_cli(overrides: list[str], output_dir: Path) -> dict:
    """Train as `python train_hydra.py <overrides>` would, .hydra/config.yaml included, into output_dir."""
    cfg = compose_config(overrides, output_dir)
    (output_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config_without_hydra(cfg), output_dir / ".hydra" / "config.yaml")
    return train(cfg)


@pytest.fixture
def make_config(tmp_path):
    """compose_config with the run writing into this test's tmp dir."""
    return lambda overrides=(): compose_config(list(overrides), tmp_path)
