"""End-to-end runs through the composed Hydra config: every model, both target modes, precision,
run outputs and the one-sentence errors of the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from models import get_model_class, list_models
from train_hydra import CONFIG_DIR, ConfigError, train
from training.schedules import warmup_cosine
from training.trainer import resolve_accelerator, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))
SMALL_DATA = ["data.generator.T=600", "data.batch_size=16"]
SMALL_FIELD_DATA = ["data=antipodal_field", "data.grid_size=8", *SMALL_DATA]


def model_configs_reading(input_kind: str) -> list[str]:
    """The model configs whose registered model reads `input_kind` (vectors, tokens or fields)."""
    from train_hydra import compose_config

    names = {stem: compose_config([f"model={stem}"], tempfile.gettempdir()).model.name for stem in MODEL_CONFIGS}
    return [stem for stem, name in names.items() if input_kind in get_model_class(name).supported_inputs]


def test_every_registered_model_has_a_config_and_every_config_a_registered_model(tmp_path):
    from train_hydra import compose_config

    names = {name: compose_config([f"model={name}"], tmp_path).model.name for name in MODEL_CONFIGS}
    assert set(list_models()) <= set(MODEL_CONFIGS)
    assert set(names.values()) == set(list_models())
    assert (
        names["z2_seam_kstar"] == "z2_seam" and compose_config(["model=z2_seam_kstar"], tmp_path).model.gate == "kstar"
    )


@pytest.mark.parametrize("target_mode", ["last", "next_step"])
@pytest.mark.parametrize("model", model_configs_reading("vectors"))
def test_fast_dev_run_of_every_vector_model(make_config, model, target_mode):
    cfg = make_config([f"model={model}", f"data.target_mode={target_mode}", "debug=fdr", *SMALL_DATA])
    record = train(cfg)
    metrics = record["metrics"]
    for key in ("val/mse", "test/mse", "val/mse_zero", "test/loss"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert (record["num_parameters"] > 0) == (model != "hamilton_imm")  # the reference filter is not trained
    assert (Path(cfg.paths.output_dir) / "metrics.json").is_file()


@pytest.mark.parametrize("target_mode", ["last", "next_step"])
@pytest.mark.parametrize("model", model_configs_reading("fields"))
def test_fast_dev_run_of_every_field_model(make_config, model, target_mode):
    cfg = make_config(
        [
            f"model={model}",
            f"data.target_mode={target_mode}",
            "debug=fdr",
            *SMALL_FIELD_DATA,
            "data.generator.p_switch=0.3",
        ]
    )
    record = train(cfg)
    for key in ("val/mse", "test/mse", "val/mse_transition", "val/mse_zero", "test/loss"):
        assert torch.isfinite(torch.tensor(record["metrics"][key])), key
    assert record["num_parameters"] > 0 and (Path(cfg.paths.output_dir) / "metrics.json").is_file()


def test_a_run_writes_metrics_checkpoints_and_tensorboard_events(make_config):
    cfg = make_config(
        [
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=5",
            "trainer.limit_val_batches=3",
            "trainer.limit_test_batches=3",
            "callbacks.rich_progress_bar=null",
            *SMALL_DATA,
        ]
    )
    record = train(cfg)
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["val/mse"] == pytest.approx(record["metrics"]["val/mse"])
    assert {"num_parameters", "wall_time_s", "device", "precision"} <= set(saved)
    assert saved["device"] == "cpu" and saved["precision"] == "32-true"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert Path(saved["evaluated_checkpoint"]).parent == out / "checkpoints"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["hyper_parameters"]["model_type"] == "z2_seam"


def test_learning_rate_and_gradient_norm_are_logged(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(
        [
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=12",
            "trainer.limit_val_batches=2",
            "trainer.log_every_n_steps=1",
            "test=false",
            "callbacks=none",
            *SMALL_DATA,
        ]
    )
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/lr", "train/grad_norm", "train/loss", "train/loss_epoch", "val/mse", "val/mse_transition"} <= tags
    learning_rates = [event.value for event in events.Scalars("train/lr")]
    assert len(learning_rates) == 12 and learning_rates[5] > learning_rates[0]  # onecycle warms up
    assert all(event.value > 0 for event in events.Scalars("train/grad_norm"))


@pytest.mark.parametrize("trainer", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize(
    "model, data",
    [(model, SMALL_DATA) for model in model_configs_reading("vectors")]
    + [(model, SMALL_FIELD_DATA) for model in model_configs_reading("fields")],
)
def test_every_model_trains_under_bf16_mixed_autocast(make_config, model, data, trainer):
    # CPU autocast runs the bf16 paths (matmuls in bf16, the scan and the fused kernels in float32)
    # that bf16-mixed takes on CUDA; on a CUDA machine the gpu case runs them there.
    overrides = [f"model={model}", f"trainer={trainer}", "debug=fdr", "trainer.precision=bf16-mixed", *data]
    record = train(make_config(overrides))
    assert record["precision"] == "bf16-mixed"
    assert record["device"].startswith({"cpu": "cpu", "gpu": "cuda"}[trainer])
    for key in ("val/mse", "test/mse", "test/loss"):
        assert torch.isfinite(torch.tensor(record["metrics"][key])), key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of fp16 AMP")
def test_16_mixed_falls_back_on_cpu_with_one_warning(make_config, caplog):
    with pytest.warns(UserWarning, match="AMP with fp16 is not supported on CPU") as warnings:
        record = train(make_config(["debug=fdr", "trainer.precision=16-mixed", *SMALL_DATA]))
    assert len([w for w in warnings if "fp16" in str(w.message)]) == 1
    assert record["precision"] == "bf16-mixed"


def test_auto_device_and_precision_rules():
    assert resolve_accelerator("cpu") == "cpu"
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "mps") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"  # kept; Lightning warns and swaps it
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_accelerator("auto") == "cpu"


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("ckpt_path=/does/not/exist.ckpt", "ckpt_path=/does/not/exist.ckpt does not exist"),
        ("optim.scheduler=triangle", "optim.scheduler='triangle' is not allowed"),
        ("model.hidden_dim=0", "model.hidden_dim=0 is not allowed"),
        ("data.history_length=9000", "data.history_length=9000 is too long"),
    ],
)
def test_bad_config_values_raise_one_sentence_naming_the_key(make_config, override, message):
    with pytest.raises(ConfigError) as error:
        train(make_config([override]))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train_hydra.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "model=nonexistent",
            "Invalid config: model=nonexistent is not a registered model or model variant; choose one of: "
            f"{', '.join(MODEL_CONFIGS)}.",
        ),
        (
            "data.generator.p_switch=1.5",
            "Invalid config: data.generator.p_switch=1.5 is outside the allowed range [0, 1].",
        ),
    ],
)
def test_cli_rejects_bad_input_in_one_sentence(tmp_path, override, expected):
    result = run_cli(override, f"paths.log_dir={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in result.stderr


def test_multirun_gives_one_job_dir_per_model(tmp_path):
    result = run_cli("-m", "model=z2_seam,z2_equiv,lstm", "debug=fdr", *SMALL_DATA, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(path.parent for path in tmp_path.glob("debug/multiruns/*/*/metrics.json"))
    assert [json.loads((job / "metrics.json").read_text())["model"] for job in jobs] == ["z2_seam", "z2_equiv", "lstm"]


def test_regression_metrics_split_by_transition_and_leave_out_empty_groups():
    from training.metrics import RegressionMetrics

    metrics = RegressionMetrics()
    prediction, target = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 0.0, 3.0, 0.0])
    metrics.update(prediction, target, torch.tensor([True, True, False, False]))
    values = metrics.compute_and_reset()
    assert values["mse"].item() == pytest.approx(5.0)  # (0 + 4 + 0 + 16) / 4
    assert values["mse_transition"].item() == pytest.approx(2.0)
    assert values["mse_stable"].item() == pytest.approx(8.0)
    assert values["mse_zero"].item() == pytest.approx(2.5)
    metrics.update(prediction, target, torch.zeros(4, dtype=torch.bool))
    assert "mse_transition" not in metrics.compute_and_reset()


def test_a_run_without_loggers_keeps_the_default_callbacks_that_work_without_one(make_config):
    record = train(
        make_config(
            [
                "logger=none",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=2",
                "callbacks.rich_progress_bar=null",
                *SMALL_DATA,
            ]
        )
    )
    assert torch.isfinite(torch.tensor(record["metrics"]["val/mse"]))
