"""Resuming with a larger budget: the extra epochs train, and the LR schedule continues where it stopped."""

from __future__ import annotations

import itertools

import pytest
import torch
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from train_hydra import compose_config, train

SHORT_RUN = [
    "data.generator.T=600",
    "data.batch_size=16",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=2",
    "trainer.accelerator=cpu",
    "callbacks.rich_progress_bar=null",
    "callbacks.early_stopping=null",
    "test=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]
PEAK = 3e-3


def learning_rates(run_dir) -> dict[int, float]:
    """The LR of every training step, as train/lr in TensorBoard (both runs of a resumed dir)."""
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return {event.step: event.value for event in events.Scalars("train/lr")}


def last_epoch(run_dir) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine_warmup"])
def test_a_run_stopped_midway_and_resumed_with_twice_the_epochs_continues_its_lr(tmp_path, scheduler):
    """Stopped after 2 of 4 epochs (step 12 of 24), resumed with 8 epochs: the LR at step 12 follows on
    from step 11, then anneals to the end of the old schedule at the new last step, 48."""
    common = [*SHORT_RUN, f"optim.scheduler={scheduler}"]
    stopped = compose_config([*common, "trainer.max_epochs=4"], tmp_path)
    with open_dict(stopped):
        stopped.callbacks.stop_after_two = {"_target_": "test_resume_and_validation.StopAfterEpochs", "epochs": 2}
    train(stopped)
    assert last_epoch(tmp_path) == 1
    train(compose_config([*common, "trainer.max_epochs=8", "ckpt_path=auto"], tmp_path))
    assert last_epoch(tmp_path) == 7

    lr = learning_rates(tmp_path)
    steps = sorted(lr)
    assert steps[-1] >= 47
    changes = [abs(lr[step] - lr[step - 1]) for step in steps[1:12]]
    assert abs(lr[12] - lr[11]) <= max(changes)  # no jump at the resume step
    after = [lr[step] for step in steps if step >= 11]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(after))  # still annealing
    assert lr[steps[-1]] < 0.02 * PEAK and lr[12] > 0.3 * PEAK


def test_a_finished_schedule_resumed_for_more_epochs_trains_them_at_its_final_lr(tmp_path):
    train(compose_config([*SHORT_RUN, "trainer.max_epochs=2"], tmp_path))
    final = learning_rates(tmp_path)[11]
    train(compose_config([*SHORT_RUN, "trainer.max_epochs=3", "ckpt_path=auto"], tmp_path))
    assert last_epoch(tmp_path) == 2
    lr = learning_rates(tmp_path)
    assert [lr[step] for step in range(12, 18)] == pytest.approx([final] * 6, rel=1e-6) and final < 1e-6
