"""MLflow and Weights & Biases loggers end to end, offline, into the run dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_hydra import CONFIG_DIR, compose_config, train
from training.command_line import check_group_choices

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "debug=limit",
    "model=lstm",
    "model.hidden_dim=16",
    "data.generator.T=600",
    "data.batch_size=16",
    "print_config=false",
    "callbacks.rich_progress_bar=null",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "tags=[logger_test]",
]


# Slow: importing mlflow and creating its SQLite store take most of a minute on a busy 2-core machine.
@pytest.mark.slow
def test_mlflow_run_is_in_the_local_store_with_its_metrics(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://unreachable.invalid")  # the config's URI must win
    record = train(compose_config([*TINY, "logger=mlflow"], tmp_path))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "lstm"
    for key in ("val/loss", "test/mse"):
        assert run.data.metrics[key] == pytest.approx(record["metrics"][key])
    assert run.data.params["model/hidden_dim"] == "16" and run.data.params["tags"] == "['logger_test']"
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2 + 1  # two epochs and the final validate


# Slow: a whole `python train_hydra.py` process, and wandb starts its service process (about 30 s on a
# busy 2-core machine). A process, because wandb writes the run out when the process ends.
@pytest.mark.slow
def test_wandb_writes_an_offline_run_into_the_run_dir(tmp_path):
    environment = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_BASE_URL": "http://unreachable.invalid",
    }  # any contact would fail
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_hydra.py"), *TINY, "logger=wandb", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("*.wandb")
    # The run's transaction log (what `wandb sync` uploads) holds the logged metrics and the tags.
    records = run_file.read_bytes()
    assert b"val/loss" in records and b"test/mse" in records and b"logger_test" in records


def test_several_loggers_can_be_chosen_on_the_command_line(tmp_path):
    check_group_choices(["logger=[tensorboard,mlflow]"], CONFIG_DIR)  # passes the early check
    with pytest.raises(SystemExit, match=r"logger=nope is not a config in configs/logger"):
        check_group_choices(["logger=[tensorboard,nope]"], CONFIG_DIR)
    cfg = compose_config(["logger=[tensorboard,mlflow,wandb]"], tmp_path)
    assert set(cfg.logger) == {"tensorboard", "mlflow", "wandb"}
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)
