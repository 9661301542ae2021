"""The training step's own bookkeeping stays cheap: no host reads of tensors on steps that log
nothing, Lightning's per-hook bookkeeping skips nn.Module's attribute tables, hooks run under no
profiler context unless a profiler is asked for, and the epoch's training loss is still the
sample-weighted mean of the step losses."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.profilers import PassThroughProfiler
from torch.overrides import TorchFunctionMode

from models import delta_cpu_kernel, scan_cpu_kernel
from train_hydra import build_module

# Tensor methods that copy a value to the host, which on a GPU waits for all queued work.
HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"}
RUN = [
    "model=z2_delta",
    "data.generator.T=1000",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "logger=none",
    "callbacks=none",
    "test=false",
    "trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1000",
]


class CountHostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


class RecordLosses(pl.Callback):
    def __init__(self) -> None:
        self.weighted, self.samples = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.weighted.append(float(outputs["loss"]) * len(batch["x"]))
        self.samples.append(len(batch["x"]))


def _fit(make_config, callbacks: list[pl.Callback], wrap_hooks: CountHostReads | None = None):
    cfg = make_config(RUN)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    if wrap_hooks is not None:
        for hook in ("training_step", "on_before_optimizer_step"):
            original = getattr(module, hook)

            def counted(*args, original=original, **kwargs):
                with wrap_hooks:
                    return original(*args, **kwargs)

            setattr(module, hook, counted)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        limit_val_batches=0,
        log_every_n_steps=1000,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_training_steps_that_log_nothing_read_no_tensor_on_the_host(make_config):
    # The fused kernels check themselves against their references once per process, at first use;
    # that one-time check reads values on the host, so it happens here, before the counted steps.
    scan_cpu_kernel.kernel()
    delta_cpu_kernel.kernel()
    counter = CountHostReads()
    _fit(make_config, [], wrap_hooks=counter)
    assert counter.reads == []


class CountModuleSetattr:
    """Counts the attribute names set through torch.nn.Module.__setattr__."""

    def __init__(self, monkeypatch) -> None:
        self.names: list[str] = []
        original = torch.nn.Module.__setattr__

        def counted(module, name, value):
            self.names.append(name)
            original(module, name, value)

        monkeypatch.setattr(torch.nn.Module, "__setattr__", counted)


def test_lightnings_hook_name_bookkeeping_bypasses_module_setattr(make_config, monkeypatch):
    counter = CountModuleSetattr(monkeypatch)
    trainer = _fit(make_config, [])
    assert trainer.global_step > 10
    assert "_current_fx_name" not in counter.names
    assert trainer.lightning_module._current_fx_name is None  # Lightning's reset after fit still lands


def test_the_epoch_training_loss_is_the_sample_weighted_mean_of_the_step_losses(make_config):
    recorder = RecordLosses()
    trainer = _fit(make_config, [recorder])
    assert len(set(recorder.samples)) > 1  # a short last batch, so the weights matter
    expected = sum(recorder.weighted) / sum(recorder.samples)
    unweighted = sum(w / n for w, n in zip(recorder.weighted, recorder.samples)) / len(recorder.samples)
    logged = float(trainer.callback_metrics["train/loss_epoch"])
    assert abs(logged - expected) <= 1e-6 * abs(expected)
    assert abs(logged - unweighted) > 1e-6 * abs(expected)  # negative control: not the plain mean of steps


def _profiled_hook_calls(make_config, monkeypatch, overrides: list[str]) -> list[str]:
    """The hook calls that a fit with the composed trainer config runs inside a profiler context."""
    profiled: list[str] = []

    def start(profiler, action_name: str) -> None:
        if action_name.startswith(("[LightningModule]", "[Callback]", "[Strategy]")):
            profiled.append(action_name)

    monkeypatch.setattr(PassThroughProfiler, "start", start)
    cfg = make_config([*RUN, *overrides])
    datamodule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule)
    assert trainer.global_step > 10
    return profiled


def test_hooks_run_under_no_profiler_context_unless_one_is_asked_for(make_config, monkeypatch):
    assert _profiled_hook_calls(make_config, monkeypatch, []) == []
    # Negative control: Lightning's own pass-through profiler, named explicitly, enters one per hook call.
    explicit = ["+trainer.profiler._target_=pytorch_lightning.profilers.PassThroughProfiler"]
    assert "[Strategy]SingleDeviceStrategy.training_step" in _profiled_hook_calls(make_config, monkeypatch, explicit)
