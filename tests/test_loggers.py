"""MLflow and Weights & Biases loggers end to end, offline, into the run dir."""

from __future__ import annotations

import pytest

from train_hydra import check_group_choices, compose_config, train

TINY = ["debug=limit", "model=lstm", "model.hidden_dim=16", "data.generator.T=600", "data.batch_size=16",
        "print_config=false", "callbacks.rich_progress_bar=null", "trainer.enable_model_summary=false",
        "trainer.enable_progress_bar=false", "tags=[logger_test]"]


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


# Slow: wandb starts its service process, several seconds on a busy 2-core machine.
@pytest.mark.slow
def test_wandb_writes_an_offline_run_into_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://unreachable.invalid")  # any contact would fail
    train(compose_config([*TINY, "logger=wandb"], tmp_path))
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("*.wandb")
    assert run_file.stat().st_size > 0
    summary = (run_dir / "files" / "wandb-summary.json").read_text()
    assert '"val/loss"' in summary and '"test/mse"' in summary


# Slow: aim starts its RocksDB repo and indexing; optional, skipped where aim is not installed.
@pytest.mark.slow
def test_aim_run_is_in_the_local_repo_with_its_metrics(tmp_path):
    aim = pytest.importorskip("aim")
    record = train(compose_config([*TINY, "logger=aim"], tmp_path))
    (run,) = list(aim.Repo(str(tmp_path)).iter_runs())
    assert run.name == "lstm" and run.experiment == "debug"
    logged = {metric.name: metric for metric in run.metrics()}
    assert logged["val/loss"].values.last_value() == pytest.approx(record["metrics"]["val/loss"])
    assert "test/mse" in logged


def test_several_loggers_can_be_chosen_on_the_command_line(tmp_path):
    check_group_choices(["logger=[tensorboard,mlflow]"])  # passes the early check
    with pytest.raises(SystemExit, match=r"logger=nope is not a config in configs/logger"):
        check_group_choices(["logger=[tensorboard,nope]"])
    cfg = compose_config(["logger=[tensorboard,mlflow,wandb]"], tmp_path)
    assert set(cfg.logger) == {"tensorboard", "mlflow", "wandb"}
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)
