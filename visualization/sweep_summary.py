"""Sweep summary: summary.csv, summary.md and summary_by_config.md in a Hydra multirun dir.

Registered as a Hydra callback in configs/hydra/default.yaml, so every multirun (basic, joblib,
SLURM, Optuna) ends with one table of all its jobs.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from training.run_files import JOB_ERROR_FILE

log = logging.getLogger(__name__)


class SweepSummaryCallback(Callback):
    """Writes summary.csv and summary.md in the sweep dir when a multirun ends: one row per job
    with its overrides, status, final metrics, wall time and error.

    Rows are assembled from what each job left in its dir (metrics.json, or job_error.json for a
    failed job), so jobs that ran in other processes (joblib, SLURM) are summarised too.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Before the sweeper starts: a study stored in the sweep dir (Optuna's sqlite) needs the dir.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        job_dirs = sorted((path.parent.parent for path in sweep_dir.glob("*/.hydra/overrides.yaml")), key=job_order)
        if not job_dirs:
            return
        rows = [job_summary(job_dir) for job_dir in job_dirs]
        with open(sweep_dir / "summary.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
            writer.writeheader()
            writer.writerows(rows)
        # In summary.md each job links to its dir (metrics.json, checkpoints, TensorBoard events).
        linked = [{**row, "job": f"[{row['job']}]({row['job']}/)"} for row in rows]
        (sweep_dir / "summary.md").write_text(markdown_table(linked))
        by_config = summary_over_seeds(rows)
        if len(by_config) < len(rows):
            (sweep_dir / "summary_by_config.md").write_text(markdown_table(by_config))
        failed = sum(row["status"] != "COMPLETED" for row in rows)
        log.info(f"sweep summary of {len(rows)} jobs ({failed} not completed): {sweep_dir / 'summary.md'}")


def job_order(job_dir: Path) -> tuple[bool, int, str]:
    """Sort key of job dirs, named `<job number>_<overrides>` (configs/hydra/default.yaml): by job
    number, so job 10 follows job 9; dirs without a number go last, by name."""
    number = job_dir.name.split("_", 1)[0]
    return (not number.isdigit(), int(number) if number.isdigit() else 0, job_dir.name)


def job_summary(job_dir: Path) -> dict[str, Any]:
    """One summary row for a job dir: overrides, status, wall time, final metrics and error."""
    row: dict[str, Any] = {
        "job": job_dir.name,
        "overrides": " ".join(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")),
    }
    if (job_dir / "metrics.json").is_file():
        record = json.loads((job_dir / "metrics.json").read_text())
        row.update(status="COMPLETED", wall_time_s=round(record["wall_time_s"], 2), **record["metrics"], error="")
    elif (job_dir / JOB_ERROR_FILE).is_file():
        failure = json.loads((job_dir / JOB_ERROR_FILE).read_text())
        row.update(status="FAILED", wall_time_s=round(failure["wall_time_s"], 2), error=failure["error"])
    else:
        row.update(status="NO RESULT", error="the job left neither metrics.json nor an error record")
    row["error"] = row.pop("error")  # last column: errors are long
    return row


def summary_over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (overrides without `seed=`): completed jobs, and mean ± std of each metric."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        config = " ".join(token for token in row["overrides"].split() if not token.startswith("seed="))
        groups.setdefault(config, []).append(row)
    summary = []
    for config, members in groups.items():
        completed = [row for row in members if row["status"] == "COMPLETED"]
        entry: dict[str, Any] = {"overrides": config, "completed": f"{len(completed)}/{len(members)}"}
        for key in (key for key in completed[0] if "/" in key) if completed else ():
            values = np.array([row[key] for row in completed if key in row], dtype=float)
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            entry[key] = f"{values.mean():.6g} ± {spread:.2g}"
        summary.append(entry)
    return summary


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_markdown_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _markdown_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")
