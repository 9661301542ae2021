"""Hydra multirun through the real command line: summaries, failures, Optuna and joblib."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from train_hydra import CONFIG_DIR, compose_config
from training.command_line import name_jobs_by_what_they_sweep
from training.sweep_jobs import JOB_DIR_NAME_LENGTH, job_dir_name, metric_direction

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=fdr", "data.generator.T=600", "data.batch_size=16"]


def sweep(tmp_path: Path, *overrides: str) -> Path:
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_hydra.py"), "-m", *overrides, *TINY, f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("debug/multiruns/*")
    return sweep_dir


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv") as file:
        return list(csv.DictReader(file))


def test_a_2x2_sweep_with_a_failing_job_summarises_all_four(tmp_path):
    # z2_seam needs an even hidden_dim, so exactly one of the four jobs fails.
    sweep_dir = sweep(tmp_path, "model=z2_seam,lstm", "model.hidden_dim=7,8")
    # Only the swept overrides (TINY's are shared by every job), sorted by key as Hydra does.
    job_dirs = [
        "0_model.hidden_dim=7,model=z2_seam",
        "1_model.hidden_dim=8,model=z2_seam",
        "2_model.hidden_dim=7,model=lstm",
        "3_model.hidden_dim=8,model=lstm",
    ]
    assert sorted(path.name for path in sweep_dir.iterdir() if path.is_dir()) == sorted(job_dirs)
    # TensorBoard names each run by its path under the sweep dir: `<job dir>/tensorboard`.
    hydra_config = OmegaConf.load(sweep_dir / job_dirs[2] / ".hydra" / "hydra.yaml").hydra
    assert Path(hydra_config.runtime.output_dir) == (sweep_dir / job_dirs[2]).resolve()
    saved = OmegaConf.load(sweep_dir / job_dirs[2] / ".hydra" / "config.yaml")
    assert OmegaConf.to_container(saved.logger.tensorboard)["save_dir"] == "${paths.output_dir}/tensorboard"
    rows = summary_rows(sweep_dir)
    assert [row["job"] for row in rows] == job_dirs
    assert [row["overrides"].split()[:2] for row in rows] == [
        ["model=z2_seam", "model.hidden_dim=7"],
        ["model=z2_seam", "model.hidden_dim=8"],
        ["model=lstm", "model.hidden_dim=7"],
        ["model=lstm", "model.hidden_dim=8"],
    ]
    assert [row["status"] for row in rows] == ["FAILED", "COMPLETED", "COMPLETED", "COMPLETED"]
    assert rows[0]["error"].startswith("ConfigError: model.hidden_dim=7 is not allowed for z2_seam")
    assert rows[0]["val/mse"] == "" and all(float(row["val/mse"]) > 0 for row in rows[1:])
    assert all(float(row["wall_time_s"]) >= 0 for row in rows)
    markdown = (sweep_dir / "summary.md").read_text().splitlines()
    assert len(markdown) == 2 + 4 and "FAILED" in markdown[2]
    assert markdown[3].startswith(f"| [{job_dirs[1]}]({job_dirs[1]}/) |")  # each row links to its job dir


def test_optuna_search_runs_three_trials_and_records_the_best(tmp_path):
    sweep_dir = sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=3")
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert set(results.best_params) == {
        "optim.learning_rate",
        "model.hidden_dim",
        "model.temperature",
        "model.delta_rank",
    }
    rows = summary_rows(sweep_dir)
    assert len(rows) == 3 and all(row["status"] == "COMPLETED" for row in rows)
    assert results.best_value == min(float(row["val/mse"]) for row in rows)


def test_joblib_launcher_runs_two_jobs_in_parallel_processes(tmp_path):
    sweep_dir = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=z2_seam,gru")
    rows = summary_rows(sweep_dir)
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    assert [row["overrides"].split()[0] for row in rows] == ["model=z2_seam", "model=gru"]
    # The job dir names are resolved in the worker processes too.
    assert [row["job"] for row in rows] == ["0_model=z2_seam", "1_model=gru"]


def test_job_dir_names_are_short_path_safe_and_deterministic():
    assert job_dir_name(3, "model=lstm,seed=43") == "3_model=lstm,seed=43"
    assert job_dir_name(0, "") == "0"  # no overrides: the job number alone
    assert (
        job_dir_name(1, "callbacks=[audit,heatmap],data.path=/a b/c.txt")
        == "1_callbacks=_audit,heatmap_,data.path=_a_b_c.txt"
    )
    long_a, long_b = "model.hidden_dim=64," + "x" * 80 + "a", "model.hidden_dim=64," + "x" * 80 + "b"
    assert len(job_dir_name(5, long_a)) == len("5_") + JOB_DIR_NAME_LENGTH
    assert job_dir_name(5, long_a) != job_dir_name(5, long_b)  # cut names stay apart by their hash
    assert job_dir_name(5, long_a) == job_dir_name(5, long_a)


def test_only_the_swept_command_line_overrides_name_the_jobs():
    argv = ["-m", "model=lstm,gru", "trainer=fast", "seed=42,43", "hydra/launcher=joblib"]
    (*kept, added) = name_jobs_by_what_they_sweep(argv, CONFIG_DIR)
    assert kept == argv
    assert added == (
        "hydra.job.config.override_dirname.exclude_keys="
        "[paths.log_dir,paths.output_dir,ckpt_path,task_name,tags,trainer]"
    )
    chosen = [*argv, "hydra.job.config.override_dirname.exclude_keys=[seed]"]
    assert name_jobs_by_what_they_sweep(chosen, CONFIG_DIR) == chosen  # the user's own choice stays


def test_a_multirun_without_tags_stops_at_its_first_job(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train_hydra.py"),
            "-m",
            "model=lstm,gru",
            "tags=[]",
            *TINY,
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "tags is empty; a multirun needs tags to find its runs later, e.g. tags=[lstm_sweep]." in result.stderr
    assert not list(tmp_path.glob("debug/multiruns/*/*/metrics.json"))
    assert not list(tmp_path.glob("debug/multiruns/*/*/checkpoints"))


def test_optuna_direction_follows_the_optimized_metric(tmp_path):
    assert metric_direction("val/mse") == "minimize"
    assert metric_direction("val/accuracy") == "maximize"
    cfg = compose_config(["hparams_search=optuna", "optimized_metric=val/exact_match"], tmp_path)
    assert cfg.hydra.sweeper.direction == "maximize"


def test_slurm_launcher_config_composes(tmp_path):
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 1
