"""trainer.flush_denormal: while a trainer runs, denormal floats are flushed to zero on the main
thread and on torch's worker threads; afterwards the process's own mode is back."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import QUICK_FIT
from hydra.utils import instantiate

from train_hydra import build_module
from training.floating_point import denormals_flushed, flush_denormals

needs_flush_mode = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero mode")


class RecordFlushMode(pl.Callback):
    def __init__(self) -> None:
        self.during_steps: list[bool] = []

    def on_train_batch_end(self, *args) -> None:
        self.during_steps.append(denormals_flushed())


def fit_with(make_config, overrides: list[str]) -> RecordFlushMode:
    cfg = make_config([*QUICK_FIT, *overrides])
    datamodule = instantiate(cfg.data)
    probe = RecordFlushMode()
    trainer = instantiate(cfg.trainer, callbacks=[probe], logger=False, enable_checkpointing=False)
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule)
    return probe


@needs_flush_mode
def test_flushing_reaches_every_worker_thread():
    """torch.set_flush_denormal alone sets the calling thread only: the workers' share of a parallel
    op would keep its denormals (half of them with two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    denormal = torch.full((1 << 22,), torch.finfo(torch.float32).tiny / 4)
    try:
        assert bool((denormal * 1.0 != 0).all())
        assert flush_denormals(True)
        assert bool((denormal * 1.0 == 0).all())
        flush_denormals(False)
        assert bool((denormal * 1.0 != 0).all())
    finally:
        flush_denormals(False)
        torch.set_num_threads(threads)


@needs_flush_mode
def test_the_default_trainer_flushes_while_it_fits_and_restores_the_mode_after(make_config):
    assert not denormals_flushed()
    probe = fit_with(make_config, [])
    assert probe.during_steps and all(probe.during_steps)
    assert not denormals_flushed()


@needs_flush_mode
def test_a_mode_set_before_the_fit_is_kept_after_it(make_config):
    flush_denormals(True)
    try:
        fit_with(make_config, [])
        assert denormals_flushed()
    finally:
        flush_denormals(False)


@needs_flush_mode
def test_flush_denormal_false_keeps_denormals(make_config):
    probe = fit_with(make_config, ["trainer.flush_denormal=false"])
    assert probe.during_steps and not any(probe.during_steps)
