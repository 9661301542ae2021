"""Run management on real tiny runs made by the command line: status, sorting, --id, the cached
index and --rescan, and resuming by run id with the saved config (and the --force form)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import train_hydra
from train_hydra import ConfigError
from visualization.list_runs import INDEX_FILE, find_run, list_runs, main, resume_run

TINY = [
    "data.generator.T=800",
    "model.hidden_dim=8",
    "trainer.max_epochs=1",
    "logger=csv",
    "test=false",
    "optim.scheduler=none",  # resumed for more epochs below: no schedule laid out over the first run's steps
    "callbacks.rich_progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def cli_run(run_dir: Path, *overrides: str) -> None:
    """`python train_hydra.py <overrides>` in this process (a subprocess costs a minute on a busy machine)."""
    argv = sys.argv
    sys.argv = ["train_hydra.py", *TINY, *overrides, f"hydra.run.dir={run_dir}"]
    try:
        train_hydra.main()
    finally:
        sys.argv = argv


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    """Four runs: two finished (z2_seam and lstm), one failed, one interrupted after its checkpoint."""
    root = tmp_path_factory.mktemp("logs")
    runs = root / "train" / "runs"
    cli_run(runs / "2026-01-01_10-00-00-000001")
    cli_run(runs / "2026-01-01_11-00-00-000002", "model=lstm", "trainer.max_epochs=2")
    with pytest.raises(SystemExit, match="optim.learning_rate=0 must be > 0"):
        cli_run(runs / "2026-01-01_12-00-00-000003", "optim.learning_rate=0")
    interrupted = runs / "2026-01-01_13-00-00-000004"
    shutil.copytree(runs / "2026-01-01_10-00-00-000001", interrupted)
    # What a run killed after its last checkpoint leaves: checkpoints but no metrics.json.
    (interrupted / "metrics.json").unlink()
    return root


def rows_by_id(rows):
    return {row["id"].rsplit("-", 1)[-1]: row for row in rows}


def test_each_row_shows_task_model_overrides_step_loss_and_status(log_dir):
    rows = rows_by_id(list_runs(log_dir, rescan=True))
    assert {key: row["status"] for key, row in rows.items()} == {
        "000001": "finished",
        "000002": "finished",
        "000003": "failed",
        "000004": "interrupted",
    }
    assert rows["000002"]["model"] == "lstm" and rows["000002"]["task"] == "antipodal"
    assert "model=lstm" in rows["000002"]["overrides"] and "trainer.max_epochs=2" in rows["000002"]["overrides"]
    metrics = json.loads((log_dir / rows["000002"]["id"] / "metrics.json").read_text())["metrics"]
    assert rows["000002"]["best_val_loss"] == metrics["val/loss"]
    assert rows["000002"]["step"] == 2 * rows["000001"]["step"] > 0  # two epochs against one
    assert rows["000003"]["step"] is None and rows["000003"]["best_val_loss"] is None
    # The interrupted run's best val/loss comes from its checkpoint's record.
    assert rows["000004"]["best_val_loss"] == pytest.approx(rows["000001"]["best_val_loss"])


def test_sort_and_limit(log_dir):
    dates = [row["date"] for row in list_runs(log_dir, sort="date")]
    assert len(dates) == 4 and dates == sorted(dates, reverse=True)  # newest first
    assert list_runs(log_dir, sort="step")[0]["id"].endswith("000002")
    losses = [row["best_val_loss"] for row in list_runs(log_dir, sort="loss")]
    assert losses[-1] is None and losses[:-1] == sorted(losses[:-1])  # lowest first, runs without one last
    assert len(list_runs(log_dir, limit=2)) == 2
    with pytest.raises(SystemExit):
        main(["--root", str(log_dir), "--sort", "size"])


def test_rows_are_cached_until_a_run_changes_and_rescan_reads_every_run(log_dir, monkeypatch):
    list_runs(log_dir)
    index = json.loads((log_dir / INDEX_FILE).read_text())
    key = next(run_id for run_id in index if run_id.endswith("000001"))
    index[key]["row"]["model"] = "from the cache"
    (log_dir / INDEX_FILE).write_text(json.dumps(index))
    assert rows_by_id(list_runs(log_dir))["000001"]["model"] == "from the cache"
    assert rows_by_id(list_runs(log_dir, rescan=True))["000001"]["model"] == "z2_seam"
    index = json.loads((log_dir / INDEX_FILE).read_text())
    index[key]["row"]["model"] = "stale"
    (log_dir / INDEX_FILE).write_text(json.dumps(index))
    metrics = log_dir / key / "metrics.json"
    os.utime(metrics, ns=(metrics.stat().st_atime_ns, metrics.stat().st_mtime_ns + 10**9))  # the run changed
    assert rows_by_id(list_runs(log_dir))["000001"]["model"] == "z2_seam"


def test_id_shows_one_run_and_a_unique_ending_of_the_id_finds_it(log_dir, capsys):
    text = main(["--root", str(log_dir), "--id", "000003"])
    assert "status: failed" in text and "error: ConfigError: optim.learning_rate=0 must be > 0" in text
    assert find_run(log_dir, "train/runs/2026-01-01_11-00-00-000002").name.endswith("000002")
    with pytest.raises(ValueError, match=r"^no run under \S+ has the id 'nope'"):
        find_run(log_dir, "nope")
    with pytest.raises(ValueError, match=r"^the id '2026-01-01' fits 4 runs"):
        find_run(log_dir, "2026-01-01")


def test_resume_by_id_continues_in_the_run_dir_with_its_saved_config(tmp_path, capsys):
    run_dir = tmp_path / "interrupted"
    cli_run(run_dir)  # a copied run dir would not do: its checkpoints record the paths of the original
    (run_dir / "metrics.json").unlink()
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    steps = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    # Without --force a value that differs from the saved one is refused and nothing is written.
    with pytest.raises(
        ConfigError,
        match=r"^run interrupted was trained with trainer\.max_epochs=1; resuming keeps "
        r"the saved config, so pass --force to replace it with trainer\.max_epochs=2\.",
    ):
        resume_run(run_dir, ["trainer.max_epochs=2"])
    with pytest.raises(ConfigError, match=r"^model=lstm picks another config group"):
        resume_run(run_dir, ["model=lstm"], force=True)
    assert (run_dir / ".hydra" / "config.yaml").read_text() == saved and not (run_dir / "metrics.json").exists()
    # The saved config wins over the config files: the run resumes with its own model size.
    record, replaced = resume_run(run_dir, ["trainer.max_epochs=2", "model.hidden_dim=8"], force=True)
    assert replaced == ["trainer.max_epochs: 1 -> 2"]
    assert "force: replaced trainer.max_epochs: 1 -> 2" in capsys.readouterr().out
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * steps
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == record["metrics"]
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_epochs == 2
    assert [path.read_text() for path in (run_dir / ".hydra").glob("config.before_resume_*.yaml")] == [saved]
    assert list_runs(tmp_path, rescan=True)[0]["status"] == "finished"


def test_a_run_without_a_checkpoint_cannot_be_resumed(log_dir):
    with pytest.raises(ConfigError, match=r"^run \S+ has no checkpoints/last\.ckpt to resume from"):
        resume_run(find_run(log_dir, "000003"))
