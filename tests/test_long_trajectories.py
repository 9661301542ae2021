"""Training on long trajectories at linear cost: data.stride windows and stateful truncated BPTT."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import check_chunks_equal_whole
from hydra.utils import instantiate

from data.antipodal import AntipodalDataModule
from models import build_model
from train_hydra import ConfigError, build_module, train

SMALL = {"generator": {"T": 1000, "seed": 3}}


def _target_counts(dataset) -> Counter:
    """How often each time index is a target, over all windows of the dataset."""
    counts: Counter = Counter()
    for start in dataset.starts.tolist():
        h = dataset.history_length
        counts.update(range(start + 1, start + h + 1) if dataset.target_mode == "next_step" else [start + h])
    return counts


@pytest.mark.parametrize("history_length", [7, 10])
def test_stride_equal_to_the_window_predicts_each_training_target_exactly_once(history_length):
    dm = AntipodalDataModule(**SMALL, history_length=history_length, target_mode="next_step", stride=history_length)
    dm.setup()
    train = dm.datasets["train"]
    start, stop = dm.bounds["train"]
    counts = _target_counts(train)
    assert set(counts.values()) == {1}
    # Every target from the first possible one on, up to a tail shorter than one window.
    assert sorted(counts) == list(range(start + 1, start + 1 + len(counts)))
    assert stop - 1 - max(counts) < history_length
    # The batch content is what the window says: inputs s .. s+H-1, targets s+1 .. s+H.
    item, s = train[3], int(train.starts[3])
    torch.testing.assert_close(item["y"][:-1], item["x"][1:])
    torch.testing.assert_close(item["x"], train.x[s : s + history_length])
    # Negative control: the default stride predicts each interior target history_length times.
    dm_dense = AntipodalDataModule(**SMALL, history_length=history_length, target_mode="next_step")
    dm_dense.setup()
    assert max(_target_counts(dm_dense.datasets["train"]).values()) == history_length
    # Evaluation keeps a window at every step.
    assert len(dm.datasets["val"]) == len(dm_dense.datasets["val"])


def test_stateful_chunks_continue_each_row_from_batch_to_batch():
    dm = AntipodalDataModule(**SMALL, history_length=10, target_mode="next_step", batch_size=8, stateful=True)
    dm.setup()
    batches = list(dm.train_dataloader())
    start, stop = dm.bounds["train"]
    chunks_per_row = (stop - start - 1) // 8 // 10
    assert len(batches) == chunks_per_row and all(b["x"].shape == (8, 10, 4) for b in batches)
    x = dm.datasets["train"].x
    for k, batch in enumerate(batches):
        for row in range(8):
            first = start + (row * chunks_per_row + k) * 10
            torch.testing.assert_close(batch["x"][row], x[first : first + 10])
            torch.testing.assert_close(batch["y"][row], x[first + 1 : first + 11])
    assert set(_target_counts(dm.datasets["train"]).values()) == {1}
    # The order is the same every epoch (no shuffling), which the carried state relies on.
    torch.testing.assert_close(next(iter(dm.train_dataloader()))["x"], batches[0]["x"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"stride": 0}, "stride=0 must be a positive integer"),
        ({"stateful": True, "target_mode": "last"}, "stateful=true carries the state"),
        ({"stateful": True, "target_mode": "next_step", "stride": 5}, "stride=5 has no effect with stateful=true"),
        (
            {"stateful": True, "target_mode": "next_step", "batch_size": 64, "history_length": 20},
            "stateful=true needs batch_size * history_length + 1 = 1281 training steps",
        ),
    ],
)
def test_bad_stride_and_stateful_options_fail_in_one_sentence(options, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("+", r"\+")):
        AntipodalDataModule(**{"history_length": 10, **SMALL, **options})


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_two_chunks_with_carried_state_equal_one_chunk_of_twice_the_length(name):
    torch.manual_seed(0)
    model = build_model(name, input_dim=4, output_dim=4, hidden_dim=16, num_layers=2).double()
    x = torch.randn(3, 40, 4, dtype=torch.float64)
    check_chunks_equal_whole(model, x, torch.randn_like(x), atol=1e-10)


@pytest.mark.parametrize("model_name", ["lstm", "z2_delta", "z2_seam"])
def test_the_training_module_carries_a_detached_state_and_resets_it_each_epoch(make_config, model_name):
    cfg = make_config(
        [
            f"model={model_name}",
            "data.generator.T=1000",
            "data.target_mode=next_step",
            "data.stateful=true",
            "data.batch_size=8",
            "data.history_length=10",
            "trainer.max_epochs=1",
            "logger=none",
            "callbacks=none",
            "test=false",
        ]
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    module = build_module(cfg, datamodule)
    assert module.hparams.stateful
    batches = list(datamodule.train_dataloader())[:2]
    module.train()
    first, second = (module.scored_prediction(batch["x"]) for batch in batches)
    whole = module.model(torch.cat([batches[0]["x"], batches[1]["x"]], dim=1))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-6)
    assert all(not s.requires_grad for s in module.carried_state)
    module.on_train_epoch_start()
    assert module.carried_state is None
    # Evaluation windows start from zeros: no state is used or kept.
    module.eval()
    torch.testing.assert_close(module.scored_prediction(batches[1]["x"]), module.model(batches[1]["x"]))
    # And the whole run trains end to end.
    record = train(cfg)
    assert torch.isfinite(torch.tensor(record["metrics"]["val/mse"]))


def test_stateful_training_of_a_model_without_a_state_fails_naming_the_key(make_config):
    cfg = make_config(["model=transformer", "data.target_mode=next_step", "data.stateful=true"])
    with pytest.raises(
        ConfigError,
        match="data.stateful=true carries the model's state between batches, which "
        "model=transformer cannot do; use one of: .*gru.*lstm.*rnn",
    ):
        train(cfg)


def test_a_strided_run_trains_end_to_end(make_config):
    cfg = make_config(
        [
            "model=z2_delta",
            "data.generator.T=1000",
            "data.target_mode=next_step",
            "data.history_length=20",
            "data.stride=20",
            "debug=fdr",
        ]
    )
    record = train(cfg)
    assert torch.isfinite(torch.tensor(record["metrics"]["val/mse"]))


def test_field_data_strides_its_training_windows_and_refuses_stateful():
    from data.antipodal_field import AntipodalFieldDataModule

    dm = AntipodalFieldDataModule(
        **SMALL, history_length=10, target_mode="next_step", stride=10, grid_size=4, target="observation"
    )
    dm.setup()
    assert set(_target_counts(dm.datasets["train"]).values()) == {1}
    # Window 2 starts at step 20 of the train split (which starts at 0): targets are x_21 .. x_30.
    expected = torch.as_tensor(dm.sequence.process.x[21:31], dtype=torch.float32)
    torch.testing.assert_close(dm.datasets["train"][2]["y"], expected)
    with pytest.raises(ValueError, match="stateful=true is not available for field data"):
        AntipodalFieldDataModule(**SMALL, target_mode="next_step", stateful=True)
