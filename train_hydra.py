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
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
)

from data.text import TOKENIZER_FILE
from lightning_module import SeamGatedLightningModule
from models import OptionError, check_task, get_model_class, list_models
from models.contract import INPUT_KINDS
from training.command_line import check_group_choices, name_jobs_by_what_they_sweep
from training.config_tree import CONFIG_TREE_FILE, check_tags, print_config_tree
from training.errors import ConfigError
from training.run_files import JOB_ERROR_FILE
from training.sweep_jobs import claim_sweep_job, optimized_value
from training.tuning import tune

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
log = logging.getLogger(__name__)


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
        check_task(
            model_type,
            datamodule.task,
            f"data={data_name or type(datamodule).__name__}",
            input_kind=INPUT_KINDS[next(iter(input_size))],
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error
    contract = get_model_class(model_type)
    if contract.needs_reference_process:
        if not hasattr(datamodule, "reference_process"):
            raise ConfigError(
                f"model={model_type} needs data whose generating process is known (antipodal); "
                f"data={data_name} has none."
            )
        model_kwargs["process"] = datamodule.reference_process()
    if contract.reads_prompt_separator:
        if "separator_token" in model_kwargs:
            raise ConfigError(
                "model.separator_token is taken from the data (the token that ends each prompt); "
                "remove it from the model config."
            )
        model_kwargs["separator_token"] = getattr(datamodule, "separator_token", None)
    stateful = getattr(datamodule, "stateful", False)
    if stateful and not hasattr(get_model_class(model_type), "forward_with_state"):
        stateful_models = [name for name in list_models() if hasattr(get_model_class(name), "forward_with_state")]
        raise ConfigError(
            f"data.stateful=true carries the model's state between batches, which model={model_type} "
            f"cannot do; use one of: {', '.join(stateful_models)}, or data.stateful=false."
        )
    try:
        module = SeamGatedLightningModule(
            model_type=model_type,
            model_kwargs=model_kwargs,
            task=datamodule.task,
            output_dim=datamodule.output_dim,
            target_mode=getattr(datamodule, "target_mode", "next_step"),
            stateful=stateful,
            objective_kwargs=OmegaConf.to_container(cfg.objective, resolve=True),
            **input_size,
            **OmegaConf.to_container(cfg.optim, resolve=True),
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

    `auto` means the last.ckpt of this run's checkpoint dir (callbacks.model_checkpoint.dirpath,
    by default <run dir>/checkpoints) when it exists (a requeued or restarted job
    continues), and a fresh start when it does not.
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    if ckpt_path == "auto":
        checkpoint_dir = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
        path = Path(checkpoint_dir or Path(cfg.paths.output_dir) / "checkpoints") / "last.ckpt"
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


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(precision: str) -> None:
    """torch.set_float32_matmul_precision, with a bad value named by its config key."""
    if precision not in MATMUL_PRECISIONS:
        raise ConfigError(
            f"float32_matmul_precision={precision} is not allowed; choose one of: {', '.join(MATMUL_PRECISIONS)}."
        )
    torch.set_float32_matmul_precision(precision)


DATA_HPARAMS = ("task", "input_dim", "vocab_size", "input_shape", "output_dim", "target_mode")


def check_checkpoint_fits_data(path: str, module: SeamGatedLightningModule, data_name: str) -> None:
    """Fail in one sentence when the checkpoint at `path` was trained on data of other sizes or task."""

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, (list, tuple)) else value

    saved = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
    for key in DATA_HPARAMS:
        if key in saved and plain(saved[key]) != plain(module.hparams[key]):
            raise ConfigError(
                f"ckpt_path={path} was trained on data with {key}={saved[key]} but data={data_name} gives "
                f"{key}={module.hparams[key]}; resume it with the data it was trained on."
            )


def run_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}


def json_safe_metrics(metrics: dict[str, float]) -> tuple[dict[str, float | None], dict[str, str]]:
    """JSON has no NaN or inf: such a metric is stored as null in `metrics` and named, with its value
    as a string ("nan", "inf", "-inf"), in the second dict (metrics.json's `non_finite_metrics`)."""
    non_finite = {name: str(value) for name, value in metrics.items() if not math.isfinite(value)}
    return {name: None if name in non_finite else value for name, value in metrics.items()}, non_finite


def training_health(trainer: pl.Trainer) -> dict[str, Any]:
    """What went wrong in training, for metrics.json: why training stopped early (`stopped_early`, one
    sentence per callback that stopped it) and what the guards did (`health`, by callback class)."""
    stopped = [
        callback.stopping_reason_message
        for callback in trainer.callbacks
        if isinstance(callback, EarlyStopping) and callback.stopping_reason_message
    ]
    health = {
        type(callback).__name__: callback.health_record()
        for callback in trainer.callbacks
        if hasattr(callback, "health_record")
    }
    stopped += [record["stop_reason"] for record in health.values() if record.get("stop_reason")]
    return {"stopped_early": stopped, "health": health}


def check_numbers_are_finite(cfg: DictConfig) -> None:
    """Fail in one sentence on a NaN or infinite number anywhere in the run's config (hydra/ aside)."""

    def visit(node: Any, name: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            visit(value, f"{name}.{key}" if isinstance(key, str) else f"{name}[{key}]")
        if isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{name.lstrip('.')}={node} is not a finite number; set a finite value.")

    visit(OmegaConf.to_container(config_without_hydra(cfg), resolve=True), "")


def build_trainer(cfg: DictConfig, module: SeamGatedLightningModule) -> pl.Trainer:
    """The configured Trainer with the run's callbacks and loggers; refuses an optim.fused=true that
    its precision rules out."""
    callbacks = instantiate_collection(cfg.get("callbacks"))
    loggers = instantiate_collection(cfg.get("logger"))
    if not loggers:
        # LearningRateMonitor only writes to loggers and refuses to start without one (logger=none).
        callbacks = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    # Without a checkpoint callback (callbacks=none) Lightning would add its own, writing into the
    # logger's dir; checkpointing is off then (the guard's emergency checkpoint still lands in checkpoints/).
    checkpointing = (
        {} if any(isinstance(callback, ModelCheckpoint) for callback in callbacks) else {"enable_checkpointing": False}
    )
    trainer = instantiate_from(cfg, "trainer", callbacks=callbacks, logger=loggers or False, **checkpointing)
    try:
        module.fused_adamw(trainer)  # optim.fused=true that the trainer's precision rules out
    except OptionError as error:
        raise ConfigError(f"optim.{error}") from error
    return trainer


def fit_and_evaluate(
    cfg: DictConfig,
    trainer: pl.Trainer,
    module: SeamGatedLightningModule,
    datamodule: pl.LightningDataModule,
    ckpt_path: str | None,
) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """Fit (cfg.train), then validate and test (cfg.test) the weights the run reports: the best
    checkpoint where one exists. Returns the metrics, training_health's record and that checkpoint."""
    metrics: dict[str, float] = {}
    health: dict[str, Any] = {"stopped_early": [], "health": {}}
    evaluated_ckpt = ckpt_path
    if cfg.train and module.num_parameters == 0:
        log.info(f"model={cfg.model.name} has nothing to train (a fixed reference); it is only evaluated.")
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update(run_metrics(trainer))
    elif cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        # Taken now: evaluating a checkpoint below restores the callbacks' state as it was saved there.
        health = training_health(trainer)
        # Report val and test metrics of the same weights: the best checkpoint where one exists.
        evaluated_ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
        if evaluated_ckpt:
            trainer.validate(module, datamodule=datamodule, ckpt_path=evaluated_ckpt, weights_only=True, verbose=False)
        metrics.update(run_metrics(trainer))
    elif ckpt_path is not None:
        # train=false ckpt_path=...: evaluate the checkpoint on val (and on test below).
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True, verbose=False)
        metrics.update(run_metrics(trainer))
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=evaluated_ckpt or None, weights_only=True, verbose=False)
        metrics.update(run_metrics(trainer))
    return metrics, health, evaluated_ckpt


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the configured model; write metrics.json into the run dir and return its content."""
    check_numbers_are_finite(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    set_matmul_precision(cfg.float32_matmul_precision)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_from(cfg, "data")
    if hasattr(datamodule, "save_tokenizer"):  # text data: sampling and load_run read it back
        datamodule.save_tokenizer(Path(cfg.paths.output_dir))
    module = build_module(cfg, datamodule)
    if cfg.compile:
        # The forward only (nn.Module.compile is skipped by dynamo here): parameter names, and so
        # checkpoints, stay those of the plain model.
        module.model.forward = torch.compile(module.model.forward)
    if ckpt_path is not None:
        data_name = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
        check_checkpoint_fits_data(ckpt_path, module, data_name or type(datamodule).__name__)
    trainer = build_trainer(cfg, module)
    try:
        tuned = tune(
            trainer,
            module,
            datamodule,
            OmegaConf.to_container(cfg.get("tuner") or {}, resolve=True),
            Path(cfg.paths.output_dir),
            resuming=ckpt_path is not None,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(config_without_hydra(cfg), resolve=True))
    if cfg.print_config:  # only once every check has passed: bad input writes nothing into the run dir
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / CONFIG_TREE_FILE)

    started = time.perf_counter()
    metrics, health, evaluated_ckpt = fit_and_evaluate(cfg, trainer, module, datamodule, ckpt_path)

    metrics, non_finite = json_safe_metrics(metrics)
    record = {
        "model": cfg.model.name,
        "metrics": metrics,
        "non_finite_metrics": non_finite,
        "optimized_metric": cfg.optimized_metric,
        "num_parameters": module.num_parameters,
        "wall_time_s": time.perf_counter() - started,
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "evaluated_checkpoint": evaluated_ckpt or None,
        "tuned": tuned,
        **health,
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
    raise ConfigError(
        f"run directory {run_dir} has no evaluated checkpoint in metrics.json and no "
        "checkpoints/last.ckpt; pass a finished run or a checkpoint."
    )


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory that `checkpoint` belongs to: its nearest parent holding .hydra/config.yaml."""
    for parent in Path(checkpoint).resolve().parents:
        if (parent / ".hydra" / "config.yaml").is_file():
            return parent
    raise ConfigError(
        f"checkpoint {checkpoint} lies in no run directory (no parent holds .hydra/config.yaml); "
        "pass the run directory as well."
    )


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> TrainedRun:
    """Rebuild the run in `run_dir` (made by train_hydra.py) from its .hydra/config.yaml and its
    evaluated checkpoint, or `checkpoint`; every missing or unreadable piece fails in one sentence."""
    run_dir = Path(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(
            f"run directory {run_dir} has no .hydra/config.yaml; pass a directory made by train_hydra.py."
        )
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
    try:
        check_tags(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)
    except ValueError as error:
        sys.exit(f"Invalid config: {error}")  # stops the whole sweep, not only this job
    started = time.perf_counter()
    try:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            finished = claim_sweep_job(cfg)
            if finished is not None:
                return optimized_value(finished, cfg.optimized_metric)
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
    return optimized_value(record, cfg.optimized_metric)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONFIG_DIR)
    sys.argv[1:] = name_jobs_by_what_they_sweep(sys.argv[1:], CONFIG_DIR)
    main()
