"""Trainer switches through the composed config: gradient accumulation, torch.compile, float32
matmul precision and EMA weight averaging."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from pytorch_lightning import Trainer

from lightning_module import SeamGatedLightningModule
from train_hydra import ConfigError, compose_config, train

QUIET_CPU = [
    "data.generator.T=600",
    "data.batch_size=16",
    "print_config=false",
    "callbacks.rich_progress_bar=null",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "trainer.accelerator=cpu",
]
TINY = ["model=lstm", "model.hidden_dim=16", *QUIET_CPU]


def saved_checkpoint(run_dir, name="last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("accumulate, optimizer_steps", [(1, 6), (3, 2)])
def test_gradient_accumulation_takes_one_optimizer_step_per_n_batches(tmp_path, accumulate, optimizer_steps):
    train(
        compose_config(
            [
                *TINY,
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=6",
                "trainer.limit_val_batches=1",
                "test=false",
                f"trainer.accumulate_grad_batches={accumulate}",
            ],
            tmp_path,
        )
    )
    assert saved_checkpoint(tmp_path)["global_step"] == optimizer_steps


@pytest.fixture
def restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_float32_matmul_precision_is_applied_to_the_matmul_backends(tmp_path, restore_matmul_precision):
    train(compose_config([*TINY, "debug=fdr", "float32_matmul_precision=medium"], tmp_path))
    assert torch.get_float32_matmul_precision() == "medium"
    # What PyTorch derives from it for CPU matmuls: oneDNN may use bf16 (where the CPU has it).
    assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    train(compose_config([*TINY, "debug=fdr"], tmp_path / "default"))
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"


def test_a_bad_float32_matmul_precision_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match=r"^float32_matmul_precision=fast is not allowed; choose one of: highest"):
        train(compose_config([*TINY, "debug=fdr", "float32_matmul_precision=fast"], tmp_path))


# Slow: inductor compiles the graphs with the C++ compiler (minutes on a busy 2-core machine, less
# once its cache in the temp dir is warm). A transformer, since dynamo leaves the fused nn.LSTM eager.
@pytest.mark.slow
def test_compile_runs_the_model_through_torch_compile_and_keeps_checkpoint_names(tmp_path):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    transformer = ["model=transformer", "model.d_model=16", "model.num_layers=1", "model.num_heads=2"]
    train(
        compose_config(
            [
                *QUIET_CPU,
                *transformer,
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "test=false",
                "compile=true",
            ],
            tmp_path,
        )
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert all(not name.startswith("model._orig_mod") for name in saved_checkpoint(tmp_path)["state_dict"])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(compose_config([*TINY, "debug=fdr"], tmp_path / "plain"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0  # compile=false: nothing compiled


def test_ema_checkpoints_hold_averaged_weights_and_the_run_is_evaluated_with_them(tmp_path):
    record = train(
        compose_config(
            [
                *TINY,
                "callbacks=ema",
                "callbacks.rich_progress_bar=null",
                "callbacks.ema_weights.decay=0.9",
                "trainer.max_epochs=2",
                "trainer.limit_train_batches=5",
                "trainer.limit_val_batches=2",
                "trainer.limit_test_batches=2",
            ],
            tmp_path,
        )
    )
    checkpoint = torch.load(record["evaluated_checkpoint"], map_location="cpu", weights_only=True)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[name], raw[name]) for name in averaged)
    # The reported val loss is that of the averaged weights, not of the raw ones.
    datamodule = instantiate(compose_config(TINY, tmp_path / "check").data)
    losses = {}
    for weights_name, weights in (("averaged", averaged), ("raw", raw)):
        module = SeamGatedLightningModule.load_from_checkpoint(
            record["evaluated_checkpoint"], map_location="cpu", weights_only=True
        )
        module.load_state_dict(weights)
        trainer = Trainer(
            accelerator="cpu", logger=False, limit_val_batches=2, enable_progress_bar=False, enable_model_summary=False
        )
        (losses[weights_name],) = [result["val/loss"] for result in trainer.validate(module, datamodule, verbose=False)]
    assert record["metrics"]["val/loss"] == pytest.approx(losses["averaged"], rel=1e-5)
    assert losses["raw"] != pytest.approx(losses["averaged"], rel=1e-5)


def test_without_ema_the_checkpoint_has_no_second_set_of_weights(tmp_path):
    record = train(
        compose_config(
            [
                *TINY,
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "test=false",
            ],
            tmp_path,
        )
    )
    assert "current_model_state" not in torch.load(record["evaluated_checkpoint"], weights_only=True)
