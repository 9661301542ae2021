"""Hydra entry point: compose the config, validate it, train, test and record the run.

    python train_hydra.py model=z2_delta
    python train_hydra.py -m model=z2_seam,z2_equiv,lstm model.hidden_dim=32,64

`train(cfg)` is the one training path of the project; main.py and the tests call it too.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor

from data.text import TOKENIZER_FILE
from lightning_module import SeamGatedLightningModule
from models import OptionError, check_task, get_model_class
from models.contract import INPUT_KINDS
from training.run_files import JOB_ERROR_FILE
from training.tuning import tune

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value that cannot work; the message is one sentence naming the key."""


def compose_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """The config `python train_hydra.py <overrides>` would run, writing into `output_dir`.

    For callers outside the command line (tests, benchmarks, main.py): it composes the same
    config tree and sets the Hydra state that interpolations such as `${hydra:...}` read.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg


def config_without_hydra(cfg: DictConfig) -> DictConfig:
    """`cfg` less its `hydra` node: the run's own settings, as loggers and saved configs record them."""
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


def instantiate_from(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """instantiate(cfg[key]), with a constructor's complaint re-raised as a ConfigError naming `key`."""
    try:
        return instantiate(cfg[key], **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{key}.{cause}") from cause
        raise


def instantiate_collection(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group; entries set to null are left out."""
    if not cfg:
        return []
    return [instantiate(entry) for entry in cfg.values() if entry is not None and "_target_" in entry]


def build_module(cfg: DictConfig, datamodule: pl.LightningDataModule) -> SeamGatedLightningModule:
    """The LightningModule for `cfg.model` on the task and sizes that `datamodule` declares."""
    model_kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    model_type = model_kwargs.pop("name")
    data_name = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
    input_size = {key: getattr(datamodule, key) for key in INPUT_KINDS if getattr(datamodule, key, None) is not None}
    try:
        check_task(model_type, datamodule.task, f"data={data_name or type(datamodule).__name__}",
                   input_kind=INPUT_KINDS[next(iter(input_size))])
    except ValueError as error:
        raise ConfigError(str(error)) from error
    contract = get_model_class(model_type)
    if contract.needs_reference_process:
        if not hasattr(datamodule, "reference_process"):
            raise ConfigError(f"model={model_type} needs data whose generating process is known (antipodal); "
                              f"data={data_name} has none.")
        model_kwargs["process"] = datamodule.reference_process()
    if contract.reads_prompt_separator:
        if "separator_token" in model_kwargs:
            raise ConfigError("model.separator_token is taken from the data (the token that ends each prompt); "
                              "remove it from the model config.")
        model_kwargs["separator_token"] = getattr(datamodule, "separator_token", None)
    try:
        module = SeamGatedLightningModule(
            model_type=model_type,
            model_kwargs=model_kwargs,
            task=datamodule.task,
            output_dim=datamodule.output_dim,
            target_mode=getattr(datamodule, "target_mode", "next_step"),
            objective_kwargs=OmegaConf.to_container(cfg.objective, resolve=True),
            **input_size,
            **cfg.optim,
        )
        # A model with a fixed number of positions fails here, not at the first long test batch.
        longest_input = getattr(datamodule, "max_sequence_length", None)
        if longest_input is not None:
            module.model.check_input_length(longest_input)
        return module
    except ValueError as error:
        # Name the rejected option by its place in the config; an error without a key is the model's.
        key = error.key if isinstance(error, OptionError) else None
        group = "optim" if key in cfg.optim else "objective" if key in cfg.objective else "model"
        raise ConfigError(f"{group}.{error}") from error


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from, checked before any work starts.

    `auto` means this run dir's checkpoints/last.ckpt when it exists (a requeued or restarted job
    continues), and a fresh start when it does not.
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    if ckpt_path == "auto":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            log.info(f"ckpt_path=auto: {path} does not exist yet, so training starts from scratch.")
            return None
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt_path} does not exist; pass an existing .ckpt file, auto or null.")
    check_checkpoint_fits(path, cfg.model)
    return str(path)


def check_checkpoint_fits(path: Path, model_cfg: DictConfig) -> None:
    """Fail in one sentence unless `path` is a readable checkpoint of the configured model."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt or not a torch file at all
        raise ConfigError(
            f"ckpt_path={path} is not a readable checkpoint ({type(error).__name__}); "
            "pass a .ckpt file written by this framework."
        ) from error
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if "state_dict" not in checkpoint or "model_type" not in hparams:
        raise ConfigError(f"ckpt_path={path} is not a checkpoint of this framework (it has no model hyper-parameters).")
    model_kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    name = model_kwargs.pop("name")
    if hparams["model_type"] != name:
        raise ConfigError(
            f"ckpt_path={path} holds a {hparams['model_type']!r} model but the config has model={name}; "
            f"pass model={hparams['model_type']} or a checkpoint of {name}."
        )
    saved_kwargs = hparams.get("model_kwargs") or {}
    for key, value in model_kwargs.items():
        if key in saved_kwargs and saved_kwargs[key] != value:
            raise ConfigError(
                f"ckpt_path={path} was trained with model.{key}={saved_kwargs[key]} but the config has "
                f"model.{key}={value}; set model.{key}={saved_kwargs[key]} to resume it."
            )


def run_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the configured model; write metrics.json into the run dir and return its content."""
    ckpt_path = resolve_ckpt_path(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_from(cfg, "data")
    if hasattr(datamodule, "save_tokenizer"):  # text data: sampling and load_run read it back
        datamodule.save_tokenizer(Path(cfg.paths.output_dir))
    module = build_module(cfg, datamodule)
    callbacks = instantiate_collection(cfg.get("callbacks"))
    loggers = instantiate_collection(cfg.get("logger"))
    if not loggers:
        # LearningRateMonitor only writes to loggers and refuses to start without one (logger=none).
        callbacks = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    trainer = instantiate_from(cfg, "trainer", callbacks=callbacks, logger=loggers or False)
    try:
        tuned = tune(trainer, module, datamodule, OmegaConf.to_container(cfg.get("tuner") or {}, resolve=True),
                     Path(cfg.paths.output_dir), resuming=ckpt_path is not None)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(config_without_hydra(cfg), resolve=True))

    started = time.perf_counter()
    metrics: dict[str, float] = {}
    evaluated_ckpt = ckpt_path
    if cfg.train and module.num_parameters == 0:
        log.info(f"model={cfg.model.name} has nothing to train (a fixed reference); it is only evaluated.")
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update(run_metrics(trainer))
    elif cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        # Report val and test metrics of the same weights: the best checkpoint where one exists.
        evaluated_ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
        if evaluated_ckpt:
            trainer.validate(module, datamodule=datamodule, ckpt_path=evaluated_ckpt, weights_only=True, verbose=False)
        metrics.update(run_metrics(trainer))
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=evaluated_ckpt or None, weights_only=True, verbose=False)
        metrics.update(run_metrics(trainer))

    record = {
        "model": cfg.model.name,
        "metrics": metrics,
        "optimized_metric": cfg.optimized_metric,
        "num_parameters": module.num_parameters,
        "wall_time_s": time.perf_counter() - started,
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "evaluated_checkpoint": evaluated_ckpt or None,
        "tuned": tuned,
    }
    if trainer.is_global_zero:
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    return record


@dataclass
class TrainedRun:
    """A finished run rebuilt from its directory: the saved config, its DataModule (set up) and the
    trained module in eval mode."""

    config: DictConfig
    datamodule: pl.LightningDataModule
    module: SeamGatedLightningModule
    checkpoint: Path


def evaluated_checkpoint(run_dir: Path) -> Path:
    """The checkpoint whose metrics the run reported (metrics.json), else checkpoints/last.ckpt."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        evaluated = json.loads(metrics.read_text()).get("evaluated_checkpoint")
        if evaluated and Path(evaluated).is_file():
            return Path(evaluated)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise ConfigError(f"run directory {run_dir} has no evaluated checkpoint in metrics.json and no "
                      "checkpoints/last.ckpt; pass a finished run or a checkpoint.")


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> TrainedRun:
    """Rebuild the run in `run_dir` (made by train_hydra.py) from its .hydra/config.yaml and its
    evaluated checkpoint, or `checkpoint`; every missing or unreadable piece fails in one sentence."""
    run_dir = Path(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"run directory {run_dir} has no .hydra/config.yaml; pass a directory made by train_hydra.py.")
    cfg = OmegaConf.load(config_path)
    checkpoint = Path(checkpoint) if checkpoint is not None else evaluated_checkpoint(run_dir)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint {checkpoint} does not exist; pass an existing .ckpt file.")
    check_checkpoint_fits(checkpoint, cfg.model)
    if "tokenizer_file" in cfg.data and (run_dir / TOKENIZER_FILE).is_file():
        cfg.data.tokenizer_file = str(run_dir / TOKENIZER_FILE)  # the tokens the model was trained on
    datamodule = instantiate_from(cfg, "data")
    datamodule.setup("validate")
    module = SeamGatedLightningModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    return TrainedRun(cfg, datamodule, module.eval(), checkpoint)


def metric_direction(metric_name: str) -> str:
    """`maximize` for accuracy-like metrics, `minimize` for losses and errors (for sweepers)."""
    leaf = metric_name.rsplit("/", 1)[-1]
    return "maximize" if leaf.startswith(("acc", "exact_match", "auroc", "r2")) else "minimize"


OmegaConf.register_new_resolver("metric_direction", metric_direction, replace=True)


def record_failure(output_dir: Path, error: Exception, wall_time_s: float) -> None:
    """Leave the error in the run dir (JOB_ERROR_FILE), where the sweep summary and list_runs read it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    failure = {"error": f"{type(error).__name__}: {error}", "wall_time_s": wall_time_s}
    (output_dir / JOB_ERROR_FILE).write_text(json.dumps(failure, indent=2))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train and return the optimized metric, so that every Hydra sweeper works unchanged.

    In a sweep a failing job is recorded in its dir and returns NaN (Optuna marks such a trial
    failed), so the other jobs still run and the sweep summary shows the failure.
    """
    started = time.perf_counter()
    try:
        record = train(cfg)
    except Exception as error:
        # Recorded in single runs too, so that list_runs can tell a failed run from an interrupted one;
        # but bad input aimed at an earlier run's dir (a resume) leaves that run as it was.
        output_dir, multirun = Path(cfg.paths.output_dir), HydraConfig.get().mode == RunMode.MULTIRUN
        if multirun or not isinstance(error, ConfigError) or not (output_dir / "checkpoints").exists():
            record_failure(output_dir, error, time.perf_counter() - started)
        if not multirun:
            if isinstance(error, ConfigError):
                sys.exit(f"Invalid config: {error}")
            raise
        log.exception(f"job {HydraConfig.get().job.num} failed")
        return float("nan")
    value = record["metrics"].get(cfg.optimized_metric)
    if value is None:
        log.warning(f"optimized_metric={cfg.optimized_metric} was not logged; logged: {sorted(record['metrics'])}.")
        return None
    return value if math.isfinite(value) else float("inf")


def check_group_choices(argv: list[str]) -> None:
    """Fail in one sentence when a command-line override picks a config that does not exist.

    Hydra would report it too, but as a multi-line listing of config files; for `model=` the
    useful answer is the list of registered models.
    """
    try:
        overrides = OverridesParser.create().parse_overrides(get_args_parser().parse_args(argv).overrides)
    except Exception:  # malformed overrides: Hydra's own parser explains those
        return
    for override in overrides:
        group = override.key_or_group
        # hydra/* groups also hold plugin configs that live outside configs/: Hydra checks those.
        if override.package is not None or group.split("/")[0] == "hydra" or not (CONFIG_DIR / group).is_dir():
            continue
        available = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
        chosen = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for choice in chosen:
            if choice is not None and str(choice) not in available:
                kind = "registered model or model variant" if group == "model" else f"config in configs/{group}"
                sys.exit(f"Invalid config: {group}={choice} is not a {kind}; choose one of: {', '.join(available)}.")


if __name__ == "__main__":
    check_group_choices(sys.argv[1:])
    main()
