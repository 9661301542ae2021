"""The tuner switches (Lightning's LR and batch-size finders) on real tiny runs composed from the
config, and the device helpers get_best_device / should_use_mixed_precision and their report."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from train_hydra import ConfigError, compose_config, train
from training import devices
from training.tuning import LR_PLOT_FILE, TUNER_FILE

QUIET = [
    "callbacks.rich_progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "data.generator.T=3000",
    "model.hidden_dim=8",
    "trainer.max_epochs=1",
    "test=false",
]


def test_lr_finder_applies_logs_and_plots_its_suggestion(tmp_path):
    record = train(
        compose_config(
            [
                *QUIET,
                "tuner.lr_find=true",
                "tuner.lr_find_num_training=20",
                "data.batch_size=16",
                "trainer.limit_train_batches=25",
            ],
            tmp_path,
        )
    )
    found = json.loads((tmp_path / TUNER_FILE).read_text())["learning_rate"]
    assert record["tuned"] == {"learning_rate": found} and found != 3.0e-3  # not the configured LR
    assert (tmp_path / LR_PLOT_FILE).stat().st_size > 5000
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["learning_rate"] == found
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["max_lr"] == pytest.approx(
        found
    )  # onecycle peaks there
    hparams = yaml.safe_load(next(tmp_path.rglob("hparams.yaml")).read_text())
    assert hparams["tuner/learning_rate"] == pytest.approx(found)


BATCH_SIZE_SEARCH = [
    *QUIET,
    "data.generator.T=1500",
    "tuner.batch_size_find=true",
    "tuner.batch_size_max=64",
    "tuner.batch_size_steps_per_trial=1",
    "data.batch_size=8",
    "optim.scheduler=none",
]  # no schedule: the resume below changes the epoch length
TRAIN_WINDOWS = 1500 * 0.6 - 10  # T steps, 60 % train split, windows of history_length 10


def test_batch_size_finder_replaces_the_batch_size(tmp_path):
    record = train(compose_config(BATCH_SIZE_SEARCH, tmp_path))
    assert record["tuned"] == {"batch_size": 64}  # CPU memory never runs out first: the search stops at the cap
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == pytest.approx(TRAIN_WINDOWS / 64, abs=1)


@pytest.mark.slow  # a search and two fits: about 20 s on a busy 2-core machine
def test_a_run_resumed_in_its_dir_reuses_the_batch_size_it_found(tmp_path):
    train(compose_config(BATCH_SIZE_SEARCH, tmp_path))
    steps = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    (tmp_path / TUNER_FILE).write_text(json.dumps({"batch_size": 32}))  # not what a new search would find
    resumed = train(compose_config([*BATCH_SIZE_SEARCH, "trainer.max_epochs=2", "ckpt_path=auto"], tmp_path))
    assert resumed["tuned"] == {"batch_size": 32}
    more_steps = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] - steps
    assert more_steps == pytest.approx(TRAIN_WINDOWS / 32, abs=1)


def test_no_finder_runs_by_default(make_config, tmp_path):
    assert train(make_config(["debug=fdr"]))["tuned"] == {}
    assert not (tmp_path / TUNER_FILE).exists()


def test_an_lr_search_too_short_to_suggest_fails_in_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match=r"^tuner\.lr_find stopped after too few steps to suggest a learning rate"):
        train(compose_config([*QUIET, "tuner.lr_find=true", "trainer.limit_train_batches=2"], tmp_path))


@pytest.mark.parametrize(
    ("cuda", "bf16", "mps", "device", "precision", "mixed"),
    [
        (False, False, False, "cpu", "32-true", False),
        (False, False, True, "mps", "32-true", False),
        (True, True, True, "cuda", "bf16-mixed", True),
        (True, False, False, "cuda", "16-mixed", True),
    ],
)
def test_best_device_and_mixed_precision_follow_the_auto_rules(monkeypatch, cuda, bf16, mps, device, precision, mixed):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert devices.get_best_device() == torch.device(device)
    assert devices.should_use_mixed_precision(devices.get_best_device()) is mixed
    assert devices.should_use_mixed_precision("cpu") is False
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # no real device behind the patched flags
    monkeypatch.setattr(devices, "bf16_support", lambda: {"cpu": False})
    report = devices.device_report()
    assert f"trainer.accelerator=auto picks: {device}" in report
    assert f"trainer.precision=auto picks: {precision}" in report


def test_the_device_command_prints_this_machines_devices(capsys):
    import runpy

    runpy.run_module("training.devices", run_name="__main__")
    out = capsys.readouterr().out
    assert "available devices:" in out and "  cpu: " in out and "bf16 support: cpu " in out
    picked = devices.get_best_device().type
    assert f"trainer.accelerator=auto picks: {picked}" in out
