"""Re-running an interrupted multirun with the same command (and hydra.sweep.dir) finishes it."""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
JOB = [
    "data.generator.T=600",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "callbacks.rich_progress_bar=null",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


def sweep_command(sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train_hydra.py"), "-m", *overrides, *JOB, f"hydra.sweep.dir={sweep_dir}"]


def run_until_then_kill(command: list[str], sweep_dir: Path, pattern: str) -> None:
    """Start the multirun and SIGKILL it as soon as a path matching `pattern` exists in the sweep dir."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(sweep_dir.glob(pattern)):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def job_files(job_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(job_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(job_dir.rglob("*"))
        if path.is_file() and path.suffix in (".json", ".ckpt")
    }


@pytest.mark.slow  # two multirun processes, six short training jobs: about a minute on 2 busy cores
def test_a_killed_four_job_sweep_rerun_with_the_same_command_finishes_without_retraining(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(sweep_dir, "model.hidden_dim=8,10,12,14")
    run_until_then_kill(command, sweep_dir, "1_*/metrics.json")
    assert list(sweep_dir.glob("1_*/metrics.json")) and not list(sweep_dir.glob("3_*/metrics.json"))
    assert not (sweep_dir / "summary.csv").exists()
    finished = {job.name: job_files(job) for job in sweep_dir.glob("[01]_*")}
    assert sorted(finished) == ["0_model.hidden_dim=8", "1_model.hidden_dim=10"]

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep_dir / "summary.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["status"] for row in rows] == ["COMPLETED"] * 4
    assert [row["overrides"].split()[0] for row in rows] == [f"model.hidden_dim={size}" for size in (8, 10, 12, 14)]
    assert {job: job_files(sweep_dir / job) for job in finished} == finished  # not retrained
    assert all(f"job {job[0]} is complete" in (sweep_dir / job / "train_hydra.log").read_text() for job in finished)
    assert all(json.loads(path.read_text())["metrics"]["val/mse"] > 0 for path in sweep_dir.glob("*/metrics.json"))


def test_a_sweep_job_dir_of_other_overrides_is_refused_not_overwritten(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from train_hydra import ConfigError, compose_config
    from training.sweep_jobs import SWEEP_JOB_FILE, claim_sweep_job

    cfg = compose_config(["model.hidden_dim=8"], tmp_path)
    (tmp_path / SWEEP_JOB_FILE).write_text(json.dumps({"overrides": ["model.hidden_dim=16"]}))
    assert list(HydraConfig.get().overrides.task) == ["model.hidden_dim=8"]
    with pytest.raises(ConfigError, match="belongs to the overrides model.hidden_dim=16, not model.hidden_dim=8"):
        claim_sweep_job(cfg)


def test_a_rerun_of_a_stored_optuna_study_counts_ended_trials_and_queues_the_interrupted_one(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from hydra_plugins.resumable_optuna_sweeper.resumable_optuna_sweeper import INTERRUPTED, continue_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="search", storage=storage)
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    left_running = study.ask()
    chosen = left_running.suggest_float("x", 0.0, 1.0)  # the sweep is killed here

    rerun = optuna.load_study(study_name="search", storage=storage)
    assert continue_study(rerun, n_trials=5) == (3, 3)
    interrupted = rerun.trials[2]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs[INTERRUPTED]
    # Killed again before the queued trial ran: nothing changes, nothing is queued twice.
    assert continue_study(optuna.load_study(study_name="search", storage=storage), n_trials=5) == (3, 3)
    asked = rerun.ask()
    assert asked.number == 3 and asked.suggest_float("x", 0.0, 1.0) == chosen
    assert [trial.state for trial in rerun.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.RUNNING]
    assert continue_study(rerun, n_trials=2) == (0, 4)  # a finished study runs nothing more


def test_a_continued_optuna_search_is_seeded_apart_from_its_first_run():
    from hydra_plugins.resumable_optuna_sweeper.resumable_optuna_sweeper import continued_seed

    assert continued_seed(42, 3) == continued_seed(42, 3)
    assert len({continued_seed(42, 3), continued_seed(42, 4), continued_seed(43, 3), 42}) == 4


@pytest.mark.slow  # two multirun processes, five short Optuna trials: about a minute on 2 busy cores
def test_a_killed_optuna_search_rerun_with_the_same_command_finishes_its_study(tmp_path):
    import optuna
    from optuna.trial import TrialState

    sweep_dir = tmp_path / "sweep"
    command = sweep_command(sweep_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=4")
    # Killed while trial 2 trains: sweep_job.json is its job's first own file, written after Hydra wrote its config.
    run_until_then_kill(command, sweep_dir, "2_*/sweep_job.json")
    finished = {job.name: job_files(job) for job in sweep_dir.glob("[01]_*")}
    assert len(finished) == 2 and all("metrics.json" in files for files in finished.values()), finished

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2, result.stderr[-3000:]
    assert study.trials[3].params == study.trials[2].params  # the interrupted trial ran again
    # The re-run's own draw is not the first run's first draw again (the sampler is re-seeded).
    assert study.trials[4].params not in (study.trials[0].params, study.trials[1].params)
    assert {job.name: job_files(job) for job in sweep_dir.glob("[01]_*")} == finished  # not retrained
    with open(sweep_dir / "summary.csv") as file:
        rows = {row["job"].split("_")[0]: row["status"] for row in csv.DictReader(file)}
    assert rows == {"0": "COMPLETED", "1": "COMPLETED", "2": "NO RESULT", "3": "COMPLETED", "4": "COMPLETED"}
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml").best_value
    assert best == study.best_value
