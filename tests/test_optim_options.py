"""The optim block reaches the optimizer and schedulers: betas, eps, the fused kernel, momentum cycling,
plateau, min_lr."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models.contract import OptionError
from train_hydra import (
    ConfigError,
    build_module,
    compose_config,
    instantiate_from,
    train,
)
from training.optimizers import adamw_fused_flag

QUICK = [
    "data.generator.T=600",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "test=false",
    "trainer.log_every_n_steps=1",
    "callbacks.rich_progress_bar=null",
    "trainer.accelerator=cpu",
]


def fitted(tmp_path, *overrides: str):
    cfg = compose_config([*QUICK, *overrides], tmp_path)
    train(cfg)
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True), tmp_path


def test_betas_and_eps_reach_adamw_and_beta1_stays_put_without_momentum_cycling(tmp_path):
    saved, run_dir = fitted(tmp_path, "optim.betas=[0.8,0.99]", "optim.eps=1e-6", "optim.cycle_momentum=false")
    (group,) = saved["optimizer_states"][0]["param_groups"]
    assert tuple(group["betas"]) == (0.8, 0.99) and group["eps"] == 1e-6
    momentum = EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("lr-AdamW-momentum")
    assert [event.value for event in momentum] == pytest.approx([0.8] * len(momentum)) and momentum


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_fused_adamw_is_the_cpu_default_and_trains_as_the_unfused_one(tmp_path):
    fused, fused_dir = fitted(tmp_path / "fused")
    unfused, unfused_dir = fitted(tmp_path / "unfused", "optim.fused=false")
    assert fused["optimizer_states"][0]["param_groups"][0]["fused"] is True
    assert unfused["optimizer_states"][0]["param_groups"][0]["fused"] is None  # torch's per-tensor loop
    # 8 steps of the same AdamW (decoupled weight decay, betas cycling, clipping): float32 rounding apart.
    fused_weights, unfused_weights = final_weights(fused_dir), final_weights(unfused_dir)
    assert fused_weights.keys() == unfused_weights.keys()
    for name, weight in fused_weights.items():
        torch.testing.assert_close(weight, unfused_weights[name], rtol=1e-4, atol=1e-6, msg=name)
    moved = [not torch.equal(weight, unfused_weights[name]) for name, weight in fused_weights.items()]
    assert any(moved)  # two kernels ran, not one path twice


def test_a_resumed_run_updates_as_optim_fused_says_not_as_its_checkpoint(tmp_path):
    fitted(tmp_path, "optim.fused=false", "trainer.max_epochs=1")
    resumed, _ = fitted(tmp_path, "ckpt_path=auto")  # default fused=auto, 2 epochs
    assert resumed["epoch"] == 1
    assert resumed["optimizer_states"][0]["param_groups"][0]["fused"] is True


def fit_under_fp16_gradient_scaler(tmp_path, *overrides: str) -> pl.Trainer:
    """Two steps of the composed run's module under 16-mixed with its GradScaler, clipping at 1 as the
    default config does (Lightning's own 16-mixed swaps to bf16 on CPU, so the plugin is built here)."""
    cfg = compose_config([*QUICK, *overrides], tmp_path)
    datamodule = instantiate_from(cfg, "data")
    trainer = pl.Trainer(
        accelerator="cpu",
        plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))],
        gradient_clip_val=1.0,
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule)
    return trainer


def test_auto_stays_unfused_under_the_fp16_gradient_scaler_so_clipping_sees_true_gradients(tmp_path):
    trainer = fit_under_fp16_gradient_scaler(tmp_path)
    assert trainer.global_step == 2 and trainer.optimizers[0].param_groups[0]["fused"] is None


def test_fused_true_is_refused_under_the_fp16_gradient_scaler(tmp_path):
    with pytest.raises(
        OptionError, match=r"^fused=true cannot run with the fp16 gradient scaler of precision 16-mixed"
    ):
        fit_under_fp16_gradient_scaler(tmp_path, "optim.fused=true")


def test_under_bf16_mixed_auto_is_fused_only_without_gradient_clipping(tmp_path):
    clipped, _ = fitted(tmp_path / "clipped", "trainer.precision=bf16-mixed")
    unclipped, _ = fitted(tmp_path / "unclipped", "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=null")
    assert clipped["optimizer_states"][0]["param_groups"][0]["fused"] is None
    assert unclipped["optimizer_states"][0]["param_groups"][0]["fused"] is True
    with pytest.raises(ConfigError, match=r"^optim.fused=true cannot run with gradient clipping under precision bf16"):
        fitted(tmp_path / "insisted", "trainer.precision=bf16-mixed", "optim.fused=true")


def test_fused_true_is_refused_where_the_device_has_no_fused_adamw():
    assert adamw_fused_flag(True, torch.device("cpu")) is True
    assert adamw_fused_flag("auto", torch.device("meta")) is None
    with pytest.raises(OptionError, match=r"^fused=true needs torch's fused AdamW, which .* lacks for meta"):
        adamw_fused_flag(True, torch.device("meta"))


def test_onecycle_cycles_beta1_by_default_and_the_lr_monitor_logs_it(tmp_path):
    _, run_dir = fitted(tmp_path)
    momentum = [
        event.value for event in EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("lr-AdamW-momentum")
    ]
    assert momentum[0] == pytest.approx(0.95) and min(momentum) == pytest.approx(0.85, abs=0.01)


def test_plateau_factor_patience_and_min_lr_reach_the_scheduler(tmp_path):
    cfg = compose_config(
        [
            *QUICK,
            "optim.scheduler=plateau",
            "optim.plateau_factor=0.2",
            "optim.plateau_patience=7",
            "optim.min_lr=1e-5",
        ],
        tmp_path,
    )
    module = build_module(cfg, instantiate_from(cfg, "data"))
    plateau = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert (plateau.factor, plateau.patience, plateau.min_lrs) == (0.2, 7, [1e-5])


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine_warmup"])
def test_min_lr_is_where_the_schedule_ends(tmp_path, scheduler):
    _, run_dir = fitted(tmp_path, f"optim.scheduler={scheduler}", "optim.min_lr=1e-4")
    lr = EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("train/lr")
    # The last of 8 steps is at (cosine_warmup) or next to (onecycle ends one step earlier) the floor.
    assert min(event.value for event in lr) >= 1e-4 * 0.999 and lr[-1].value < 2.5e-4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.betas=[0.8,0.99]", "optim.betas=[0.8, 0.99]: onecycle with cycle_momentum=true cycles beta1"),
        ("optim.betas=[0.9,1.0]", "optim.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
        ("optim.eps=0", "optim.eps=0 must be > 0"),
        ("optim.plateau_factor=1.5", "optim.plateau_factor=1.5 must lie in (0, 1)"),
        ("optim.min_lr=1", "optim.min_lr=1 must lie in [0, learning_rate=0.003)"),
        ("optim.fused=yes", "optim.fused='yes' is not allowed; choose auto, true or false"),
    ],
)
def test_bad_optim_values_fail_in_one_sentence(tmp_path, override, message):
    cfg = compose_config([*QUICK, override], tmp_path)
    with pytest.raises(ConfigError) as error:
        build_module(cfg, instantiate_from(cfg, "data"))
    assert str(error.value).startswith(message) and str(error.value).endswith(".")
