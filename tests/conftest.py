"""Shared fixtures: the real Hydra config, composed the way train_hydra.py composes it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_hydra import compose_config  # noqa: E402


@pytest.fixture
def make_config(tmp_path):
    """compose_config with the run writing into this test's tmp dir."""
    return lambda overrides=(): compose_config(list(overrides), tmp_path)
