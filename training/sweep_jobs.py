"""What a Hydra sweep needs of each job: its dir name, its claim on that dir (so a re-run of the same
multirun command continues the sweep), and the value it returns to the sweeper.

Importing this module registers the `job_dir_name` and `metric_direction` resolvers that
configs/hydra/default.yaml and configs/hparams_search/optuna.yaml use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from training.errors import ConfigError
from training.run_files import JOB_ERROR_FILE

log = logging.getLogger(__name__)


def metric_direction(metric_name: str) -> str:
    """`maximize` for accuracy-like metrics, `minimize` for losses and errors (for sweepers)."""
    leaf = metric_name.rsplit("/", 1)[-1]
    return "maximize" if leaf.startswith(("acc", "exact_match", "auroc", "r2")) else "minimize"


OmegaConf.register_new_resolver("metric_direction", metric_direction, replace=True)

JOB_DIR_NAME_LENGTH = 64  # longer override lists are cut and end in a hash of the whole list


def job_dir_name(job_num: int, override_dirname: str) -> str:
    """A sweep job's dir name: its number, then its overrides (`3_model=lstm,seed=43`).

    The number keeps two jobs with the same overrides apart (Optuna may repeat a trial) and sorts
    the dirs; characters that are awkward in paths become `_`. Nothing but the job number and the
    overrides enters the name, so the same sweep command gives the same dirs again.
    """
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", override_dirname)
    if len(name) > JOB_DIR_NAME_LENGTH:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
        name = f"{name[: JOB_DIR_NAME_LENGTH - 9]}-{digest}"
    return f"{job_num}_{name}" if name else str(job_num)


OmegaConf.register_new_resolver("job_dir_name", job_dir_name, replace=True)


SWEEP_JOB_FILE = "sweep_job.json"  # the overrides a sweep job dir belongs to


def claim_sweep_job(cfg: DictConfig) -> dict[str, Any] | None:
    """Let a re-run of the same multirun command (same hydra.sweep.dir) continue where it stopped.

    A job dir holding a metrics.json of these overrides is complete: its record is returned and
    nothing is retrained. A job dir that was started but not finished resumes from its last.ckpt
    (ckpt_path=auto). A job dir started by other overrides fails in one sentence instead of being
    overwritten.
    """
    output_dir = Path(cfg.paths.output_dir)
    overrides = list(HydraConfig.get().overrides.task)
    claim = output_dir / SWEEP_JOB_FILE
    if claim.is_file():
        claimed = json.loads(claim.read_text())["overrides"]
        if claimed != overrides:
            raise ConfigError(
                f"sweep job dir {output_dir} belongs to the overrides {' '.join(claimed)}, not "
                f"{' '.join(overrides)}; continue a sweep with its own command or pass a new hydra.sweep.dir."
            )
        metrics = output_dir / "metrics.json"
        if metrics.is_file():
            log.info(f"job {HydraConfig.get().job.num} is complete ({metrics}); its metrics are reused, not retrained.")
            return json.loads(metrics.read_text())
        if cfg.ckpt_path is None:
            with open_dict(cfg):
                cfg.ckpt_path = "auto"
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        claim.write_text(json.dumps({"overrides": overrides}, indent=2))
    (output_dir / JOB_ERROR_FILE).unlink(missing_ok=True)  # a failure of an earlier attempt is history now
    return None


def optimized_value(record: dict[str, Any], metric: str) -> float | None:
    """The value a sweeper gets for `metric`: a non-finite one becomes the worst value in the metric's
    direction (+inf when minimised, -inf when maximised), so a diverged job is never the best trial."""
    if metric in record["non_finite_metrics"]:
        return float("-inf") if metric_direction(metric) == "maximize" else float("inf")
    value = record["metrics"].get(metric)
    if value is None:
        log.warning(f"optimized_metric={metric} was not logged; logged: {sorted(record['metrics'])}.")
    return value
