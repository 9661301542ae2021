"""Divergence is caught and recorded: NaN metrics reach early stopping and metrics.json, NaN or spiking
training losses are skipped and stop the run with an emergency checkpoint, bad numbers in the config
are refused, and a diverged sweep job is the worst trial."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from lightning_module import SeamGatedLightningModule
from train_hydra import ConfigError, train
from training.sweep_jobs import optimized_value

QUICK = [
    "data.generator.T=600",
    "data.batch_size=16",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.rich_progress_bar=null",
    "optim.scheduler=none",
    "trainer.accelerator=cpu",
]


def file_hashes(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in directory.glob("*.ckpt")}


def test_a_nan_validation_metric_stops_training_and_is_recorded_not_dropped(make_config, monkeypatch):
    original = SeamGatedLightningModule.scored_prediction

    def nan_when_evaluating(self, x):
        prediction = original(self, x)
        return prediction if self.training else prediction * float("nan")

    monkeypatch.setattr(SeamGatedLightningModule, "scored_prediction", nan_when_evaluating)
    cfg = make_config([*QUICK, "trainer.max_epochs=4"])
    record = train(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(record))  # strict JSON: no bare NaN in the file
    # EarlyStopping(check_finite) saw the NaN at the first validation and stopped there.
    assert torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert any("val/loss = nan is not finite" in reason for reason in saved["stopped_early"])
    for name in ("val/loss", "val/mse", "test/loss", "test/mse"):
        assert saved["metrics"][name] is None and saved["non_finite_metrics"][name] == "nan"
    assert saved["metrics"]["val/mse_zero"] > 0  # predicting zero stays finite
    assert optimized_value(saved, "val/loss") == float("inf")


def test_a_diverged_job_is_the_worst_trial_in_the_metrics_direction():
    record = {
        "metrics": {"val/loss": None, "val/accuracy": None},
        "non_finite_metrics": {"val/loss": "nan", "val/accuracy": "nan"},
    }
    assert optimized_value(record, "val/loss") == float("inf")
    assert optimized_value(record, "val/accuracy") == float("-inf")
    assert optimized_value({"metrics": {"val/loss": 0.5}, "non_finite_metrics": {}}, "val/loss") == 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.learning_rate=nan", "optim.learning_rate=nan is not a finite number"),
        ("optim.weight_decay=inf", "optim.weight_decay=inf is not a finite number"),
        ("data.split=[0.6,-inf,0.2]", "data.split[1]=-inf is not a finite number"),
    ],
)
def test_non_finite_numbers_in_the_config_are_refused_before_any_work(make_config, override, message):
    cfg = make_config([*QUICK, override])
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value).startswith(message) and str(error.value).endswith(".")
    assert not any(Path(cfg.paths.output_dir).iterdir())


def plant_loss(monkeypatch, from_step: int, factor: float, steps: int | None = None) -> dict[str, str]:
    """Multiply the training loss by `factor` from step `from_step` on (for `steps` steps, or for good);
    returns the checkpoint hashes as they were just before the first planted step."""
    original = SeamGatedLightningModule.training_step
    before: dict[str, str] = {}

    def planted(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        if self.global_step < from_step or (steps is not None and self.global_step >= from_step + steps):
            return loss
        if not before:
            before.update(file_hashes(Path(self.trainer.default_root_dir) / "checkpoints"))
        return loss * factor

    monkeypatch.setattr(SeamGatedLightningModule, "training_step", planted)
    return before


@pytest.mark.parametrize("factor", [float("nan"), 100.0])
def test_a_loss_that_turns_nan_or_jumps_100x_stops_with_an_emergency_checkpoint(
    make_config, monkeypatch, caplog, factor
):
    """From step 12 (epoch 3) the loss is NaN, or 100x what it was: steps 12-14 are skipped, then the guard stops."""
    cfg = make_config([*QUICK, "trainer.max_epochs=6", "callbacks.nonfinite_guard.spike_window=8"])
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    before = plant_loss(monkeypatch, from_step=12, factor=factor)
    with caplog.at_level(logging.ERROR, logger="audit.callbacks"):
        record = train(cfg)
    kind = "non-finite" if math.isnan(factor) else "spike"
    sentence = (
        f"NonFiniteGuard stopped training at step 15: the training loss was {kind} for 3 consecutive "
        "steps, each skipped"
    )
    assert sentence in caplog.text and sentence in record["stopped_early"][0]
    emergency = checkpoints / "emergency_step_000015.ckpt"
    assert record["health"]["NonFiniteGuard"]["emergency_checkpoint"] == str(emergency)
    assert [step["step"] for step in record["health"]["NonFiniteGuard"]["skipped_steps"]] == [12, 13, 14]
    assert {name: file_hashes(checkpoints)[name] for name in before} == before  # earlier checkpoints intact
    restored = SeamGatedLightningModule.load_from_checkpoint(emergency, weights_only=True)
    last_good = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]  # the end of epoch 2
    for name, value in restored.state_dict().items():
        torch.testing.assert_close(value, last_good[name], rtol=0, atol=0)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["metrics"]["val/mse"] > 0 and saved["non_finite_metrics"] == {}


def test_a_single_spiking_batch_is_skipped_and_the_run_recovers(make_config, monkeypatch):
    cfg = make_config([*QUICK, "trainer.max_epochs=4", "callbacks.nonfinite_guard.spike_window=8"])
    plant_loss(monkeypatch, from_step=10, factor=100.0, steps=1)
    record = train(cfg)
    (skipped,) = record["health"]["NonFiniteGuard"]["skipped_steps"]
    assert skipped["step"] == 10 and skipped["kind"] == "spike" and float(skipped["loss"]) > skipped["spike_threshold"]
    assert skipped["learning_rate_after"] == pytest.approx(0.5 * 3e-3)
    assert record["stopped_early"] == [] and record["health"]["NonFiniteGuard"]["emergency_checkpoint"] is None
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 3 and last["global_step"] == 16  # all 4 epochs ran


def test_without_spike_detection_a_100x_loss_is_trained_on(make_config, monkeypatch):
    cfg = make_config([*QUICK, "trainer.max_epochs=4", "callbacks.nonfinite_guard.spike_factor=null"])
    plant_loss(monkeypatch, from_step=10, factor=100.0, steps=1)
    record = train(cfg)
    assert record["health"]["NonFiniteGuard"]["skipped_steps"] == []
