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


def job_files(job_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(job_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(job_dir.rglob("*"))
        if path.is_file() and path.suffix in (".json", ".ckpt")
    }


@pytest.mark.slow  # two multirun processes, six short training jobs: about a minute on 2 busy cores
def test_a_killed_four_job_sweep_rerun_with_the_same_command_finishes_without_retraining(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        str(ROOT / "train_hydra.py"),
        "-m",
        "model.hidden_dim=8,10,12,14",
        *JOB,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (sweep_dir / "1" / "metrics.json").is_file():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (sweep_dir / "1" / "metrics.json").is_file() and not (sweep_dir / "3" / "metrics.json").exists()
    assert not (sweep_dir / "summary.csv").exists()
    finished = {job: job_files(sweep_dir / job) for job in ("0", "1")}

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep_dir / "summary.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["status"] for row in rows] == ["COMPLETED"] * 4
    assert [row["overrides"].split()[0] for row in rows] == [f"model.hidden_dim={size}" for size in (8, 10, 12, 14)]
    assert {job: job_files(sweep_dir / job) for job in ("0", "1")} == finished  # not retrained
    assert all(f"job {job} is complete" in (sweep_dir / job / "train_hydra.log").read_text() for job in "01")
    assert all(json.loads((sweep_dir / job / "metrics.json").read_text())["metrics"]["val/mse"] > 0 for job in "0123")


def test_a_sweep_job_dir_of_other_overrides_is_refused_not_overwritten(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from train_hydra import SWEEP_JOB_FILE, ConfigError, claim_sweep_job, compose_config

    cfg = compose_config(["model.hidden_dim=8"], tmp_path)
    (tmp_path / SWEEP_JOB_FILE).write_text(json.dumps({"overrides": ["model.hidden_dim=16"]}))
    assert list(HydraConfig.get().overrides.task) == ["model.hidden_dim=8"]
    with pytest.raises(ConfigError, match="belongs to the overrides model.hidden_dim=16, not model.hidden_dim=8"):
        claim_sweep_job(cfg)
