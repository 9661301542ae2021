"""Resume corner cases: where ckpt_path=auto looks, best scores across run dirs, checkpoints of other
data, and callbacks=none."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from lightning_module import SeamGatedLightningModule
from train_hydra import ConfigError, compose_config, resolve_ckpt_path, train

SHORT_RUN = [
    "data.generator.T=600",
    "data.batch_size=16",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "callbacks.rich_progress_bar=null",
    "callbacks.early_stopping=null",
    "trainer.enable_progress_bar=false",
]


def hashes(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in directory.glob("*.ckpt")}


def test_ckpt_path_auto_looks_in_the_configured_checkpoint_dir(tmp_path):
    elsewhere = tmp_path / "shared_checkpoints"
    overrides = [*SHORT_RUN, f"callbacks.model_checkpoint.dirpath={elsewhere}", "ckpt_path=auto"]
    assert resolve_ckpt_path(compose_config(overrides, tmp_path / "run")) is None
    train(compose_config([*overrides, "trainer.max_epochs=1", "test=false"], tmp_path / "run"))
    assert resolve_ckpt_path(compose_config(overrides, tmp_path / "run")) == str(elsewhere / "last.ckpt")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_into_a_new_run_dir_keeps_the_best_checkpoint_and_score(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    train(compose_config([*SHORT_RUN, "trainer.max_epochs=2"], first))
    best_first = json.loads((first / "metrics.json").read_text())
    before = hashes(first / "checkpoints")

    original = SeamGatedLightningModule.scored_prediction

    def worse_when_evaluating(self, x):  # the resumed epochs never beat the first run's best
        prediction = original(self, x)
        return prediction if self.training else prediction + 1.0

    monkeypatch.setattr(SeamGatedLightningModule, "scored_prediction", worse_when_evaluating)
    record = train(
        compose_config([*SHORT_RUN, "trainer.max_epochs=4", f"ckpt_path={first}/checkpoints/last.ckpt"], second)
    )
    best_name = Path(best_first["evaluated_checkpoint"]).name
    assert record["evaluated_checkpoint"] == str(second / "checkpoints" / best_name)
    assert hashes(second / "checkpoints")[best_name] == before[best_name]  # a copy of the first run's best
    assert hashes(first / "checkpoints") == before  # the first run's files are untouched
    assert sorted(hashes(second / "checkpoints")) == sorted({best_name, "last.ckpt"})


def test_a_checkpoint_of_the_same_model_on_other_data_fails_naming_the_size(tmp_path):
    train(compose_config([*SHORT_RUN, "trainer.max_epochs=1", "test=false"], tmp_path / "four"))
    last = tmp_path / "four" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as error:
        train(compose_config([*SHORT_RUN, "data.generator.obs_dim=6", f"ckpt_path={last}"], tmp_path / "six"))
    assert str(error.value) == (
        f"ckpt_path={last} was trained on data with input_dim=4 but data=antipodal gives "
        "input_dim=6; resume it with the data it was trained on."
    )
    assert not (tmp_path / "six" / "checkpoints").exists()


def test_callbacks_none_keeps_the_guard_and_writes_no_checkpoint_anywhere(tmp_path):
    data_and_trainer = [override for override in SHORT_RUN if not override.startswith("callbacks.")]
    record = train(compose_config([*data_and_trainer, "callbacks=none", "trainer.max_epochs=1"], tmp_path))
    assert "NonFiniteGuard" in record["health"] and record["evaluated_checkpoint"] is None
    assert not list(tmp_path.rglob("*.ckpt"))
    assert torch.isfinite(torch.tensor(record["metrics"]["test/mse"]))
