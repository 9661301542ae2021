"""Run management: list the runs under a log dir, show one, and resume one by its id.

    python -m visualization.list_runs                          # every run under logs/, newest first
    python -m visualization.list_runs --sort loss --limit 5    # date | step | loss
    python -m visualization.list_runs --id <run>               # one run in detail
    python -m visualization.list_runs --rescan                 # ignore the cached rows, read every run again
    python -m visualization.list_runs --resume <run>           # continue it, with its saved config, in its dir
    python -m visualization.list_runs --resume <run> --force trainer.max_epochs=40   # replace saved values

A run id is the run dir's path under the log dir (`train/runs/2026-01-01_12-00-00-000000`, or
`.../multiruns/<time>/<job>` for a sweep job); any part of it that only one run has, such as the
timestamp, works too.

Status, from what the run dir holds (the newest of these decides):
- finished: metrics.json (train_hydra.train writes it after fit and test);
- failed: job_error.json (train_hydra.main writes it when the run raised);
- interrupted: checkpoints/last.ckpt newer than either, so training stopped (or is still running)
  after a checkpoint and before the end;
- started: none of them yet (running its first epoch, or stopped before its first checkpoint).

Reading a checkpoint for its step is the slow part, so rows are cached in `<log dir>/.runs_index.json`
and re-read only when a run's files change; `--rescan` re-reads every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict

from train_hydra import CONFIG_DIR, ConfigError, compose_config, record_failure, train
from visualization.sweep_summary import JOB_ERROR_FILE

INDEX_FILE = ".runs_index.json"
SORTS = ("date", "step", "loss")
COLUMNS = ("id", "date", "status", "task", "model", "step", "best_val_loss", "overrides")


def find_run_dirs(root: Path) -> list[Path]:
    """Every dir under `root` that train_hydra.py made (it holds .hydra/config.yaml)."""
    return sorted(config.parent.parent for config in root.rglob(".hydra/config.yaml"))


def fingerprint(run_dir: Path) -> list[int]:
    """Modification times of the files a row is read from; a row is re-read when one changes."""
    files = (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json", JOB_ERROR_FILE, "checkpoints/last.ckpt")
    return [(run_dir / name).stat().st_mtime_ns if (run_dir / name).exists() else 0 for name in files]


def run_status(run_dir: Path) -> str:
    """finished, failed, interrupted or started: the newest of metrics.json, job_error.json and
    checkpoints/last.ckpt decides (a run resumed after a failure can finish, and the reverse)."""
    _, _, metrics, error, checkpoint = fingerprint(run_dir)
    if not (metrics or error or checkpoint):
        return "started"
    newest = max(metrics, error, checkpoint)
    return "failed" if newest == error else "finished" if newest == metrics else "interrupted"


def data_name(target: str) -> str:
    """`data.text.TextDataModule` -> `text`: the data module names the data of a run."""
    parts = target.split(".")
    return parts[-2] if len(parts) > 1 else target


def run_row(run_dir: Path, root: Path) -> dict[str, Any]:
    """One row: id, date, status, task (the data), model, overrides, last step and best val/loss."""
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    row: dict[str, Any] = {
        "id": run_dir.relative_to(root).as_posix(),
        "date": datetime.fromtimestamp((run_dir / ".hydra" / "config.yaml").stat().st_mtime).isoformat(" ", "seconds"),
        "status": run_status(run_dir),
        "task": data_name(str(OmegaConf.select(config, "data._target_", default="?"))),
        "model": OmegaConf.select(config, "model.name", default="?"),
        "step": None,
        "best_val_loss": None,
        "overrides": " ".join(OmegaConf.load(overrides_file)) if overrides_file.is_file() else "",
    }
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        try:
            checkpoint = torch.load(last, map_location="cpu", weights_only=True)
            row["step"] = int(checkpoint.get("global_step", 0))
            for state in checkpoint.get("callbacks", {}).values():
                if "best_model_score" in state and state.get("monitor") == "val/loss":  # Model/RunCheckpoint
                    score = state.get("best_model_score")
                    row["best_val_loss"] = float(score) if score is not None else None
        except Exception as error:  # noqa: BLE001 (a checkpoint being written, or damaged: the row says so)
            row["status"] += f" (last.ckpt unreadable: {type(error).__name__})"
    if row["status"] == "finished":
        metrics = json.loads((run_dir / "metrics.json").read_text()).get("metrics", {})
        row["best_val_loss"] = metrics.get("val/loss", row["best_val_loss"])  # of the evaluated checkpoint
    return row


def list_runs(
    root: str | Path, sort: str = "date", limit: int | None = None, rescan: bool = False
) -> list[dict[str, Any]]:
    """The rows of every run under `root`, sorted (date: newest first; step: most first; loss:
    lowest first, runs without one last) and cut to `limit`; cached rows are reused unless `rescan`."""
    root = Path(root)
    if sort not in SORTS:
        raise ValueError(f"sort={sort!r} is not allowed; choose one of: {', '.join(SORTS)}.")
    if not root.is_dir():
        raise ValueError(f"log dir {root} does not exist; pass the paths.log_dir of your runs (default logs).")
    index_path = root / INDEX_FILE
    index = {} if rescan or not index_path.is_file() else json.loads(index_path.read_text())
    rows, fresh_index = [], {}
    for run_dir in find_run_dirs(root):
        run_id, marks = run_dir.relative_to(root).as_posix(), fingerprint(run_dir)
        cached = index.get(run_id)
        row = cached["row"] if cached and cached["fingerprint"] == marks else run_row(run_dir, root)
        fresh_index[run_id] = {"fingerprint": marks, "row": row}
        rows.append(row)
    index_path.write_text(json.dumps(fresh_index, indent=1))
    keys = {
        "date": lambda row: row["date"],
        "step": lambda row: row["step"] or 0,
        "loss": lambda row: row["best_val_loss"] if row["best_val_loss"] is not None else float("inf"),
    }
    rows.sort(key=lambda row: row["id"])  # ties keep a stable order
    rows.sort(key=keys[sort], reverse=sort != "loss")
    return rows[:limit] if limit is not None else rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row[column]) for column in COLUMNS] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(COLUMNS)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(COLUMNS, widths))]
    lines += ["  ".join(value.ljust(width) for value, width in zip(line, widths)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def find_run(root: str | Path, run_id: str) -> Path:
    """The run dir whose id is `run_id`, or the one run whose id contains it; none or several fail
    in one sentence."""
    root = Path(root)
    run_dirs = find_run_dirs(root) if root.is_dir() else []
    ids = {run_dir.relative_to(root).as_posix(): run_dir for run_dir in run_dirs}
    if run_id in ids:
        return ids[run_id]
    matches = [run_dir for key, run_dir in ids.items() if run_id.strip("/") in key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(
            f"no run under {root} has the id {run_id!r}; `python -m visualization.list_runs --root {root}` lists them."
        )
    raise ValueError(
        f"the id {run_id!r} fits {len(matches)} runs under {root} "
        f"({', '.join(sorted(str(m.relative_to(root)) for m in matches))}); give more of it."
    )


def run_details(run_dir: Path, root: Path) -> str:
    row = run_row(run_dir, root)
    lines = [f"{column}: {'-' if row[column] is None else row[column]}" for column in COLUMNS]
    lines.append(f"dir: {run_dir}")
    lines.append(f"saved config: {run_dir / '.hydra' / 'config.yaml'}")
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").glob("*.ckpt"))
    lines.append(f"checkpoints: {', '.join(checkpoints) or '-'}")
    if (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
        lines += [f"  {name}: {value:.6g}" for name, value in sorted(metrics.items())]
    if (run_dir / JOB_ERROR_FILE).is_file():
        lines.append(f"error: {json.loads((run_dir / JOB_ERROR_FILE).read_text())['error']}")
    return "\n".join(lines)


def resume_run(run_dir: Path, overrides: list[str] = (), force: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Continue `run_dir` from its checkpoints/last.ckpt, in that dir, with its saved config.

    `overrides` (`key=value`) that differ from the saved config are refused unless `force`, which
    writes them over the saved values (the earlier config is kept as .hydra/config.before_resume_<time>.yaml).
    Returns train()'s record and the replacements made, as `key: old -> new` lines.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved_path = run_dir / ".hydra" / "config.yaml"
    saved = OmegaConf.load(saved_path)
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise ConfigError(f"run {run_dir} has no checkpoints/last.ckpt to resume from; start it again instead.")
    saved_overrides = run_dir / ".hydra" / "overrides.yaml"
    # Composing the run's own overrides sets the Hydra state that its interpolations read; every
    # value then comes from the saved config, not from today's config files.
    cfg = compose_config(list(OmegaConf.load(saved_overrides)) if saved_overrides.is_file() else [], run_dir)
    with open_dict(cfg):
        for key in saved:
            cfg[key] = saved[key]
        replaced = []
        try:
            parsed = OverridesParser.create().parse_overrides(list(overrides))
        except Exception as error:  # Hydra's parse error, whose text spans lines
            raise ConfigError(f"the overrides {' '.join(overrides)} are not key=value pairs Hydra can read.") from error
        for override in parsed:
            key, value = override.key_or_group, override.value()
            if (CONFIG_DIR / key.split("/")[0]).is_dir() and "." not in key:
                raise ConfigError(
                    f"{key}={value} picks another config group, which a resumed run cannot change; "
                    "start a new run for it."
                )
            current = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
            if current == value:
                continue
            if not force:
                raise ConfigError(
                    f"run {run_dir.name} was trained with {key}={current}; resuming keeps the saved "
                    f"config, so pass --force to replace it with {key}={value}."
                )
            OmegaConf.update(cfg, key, value, force_add=True)
            replaced.append(f"{key}: {current} -> {value}")
        cfg.ckpt_path = "auto"
    for line in replaced:
        print(f"force: replaced {line}", flush=True)
    if replaced:
        backup = saved_path.with_name(f"config.before_resume_{time.strftime('%Y-%m-%d_%H-%M-%S')}.yaml")
        saved_path.replace(backup)
        OmegaConf.save(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), saved_path)
    started = time.perf_counter()
    try:
        return train(cfg), replaced
    except Exception as error:
        if not isinstance(error, ConfigError):
            record_failure(run_dir, error, time.perf_counter() - started)
        raise


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="List, show and resume the runs under a log dir.")
    parser.add_argument("--root", type=Path, default=Path("logs"), help="the log dir (paths.log_dir; default logs)")
    parser.add_argument(
        "--sort", choices=SORTS, default="date", help="date (newest first), step or loss (lowest first)"
    )
    parser.add_argument("--limit", type=int, default=None, help="show at most this many runs")
    parser.add_argument("--id", dest="run_id", default=None, help="show this run in detail")
    parser.add_argument("--rescan", action="store_true", help="re-read every run instead of the cached rows")
    parser.add_argument(
        "--resume", default=None, metavar="RUN", help="continue this run in its dir with its saved config"
    )
    parser.add_argument("--force", action="store_true", help="with --resume: let the overrides replace saved values")
    parser.add_argument(
        "overrides", nargs="*", help="with --resume: key=value overrides (need --force where they differ)"
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit} must be a positive integer.")
    if (args.overrides or args.force) and args.resume is None:
        parser.error("overrides and --force go with --resume RUN.")
    try:
        if args.resume is not None:
            record, _ = resume_run(find_run(args.root, args.resume), args.overrides, args.force)
            text = f"resumed {args.resume}: " + json.dumps(record["metrics"])
        elif args.run_id is not None:
            text = run_details(find_run(args.root, args.run_id), args.root)
        else:
            text = format_table(list_runs(args.root, args.sort, args.limit, args.rescan))
    except ValueError as error:  # ConfigError included: one sentence, no traceback
        sys.exit(f"list_runs: {error}")
    print(text)
    return text


if __name__ == "__main__":
    main()
