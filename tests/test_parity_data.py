"""data=parity: running-parity targets, split lengths, determinism and one-sentence errors."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from data.parity import ParityDataModule, running_parity


def test_running_parity_by_hand():
    bits = torch.tensor([[1, 0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 0, 1, 1]])
    expected = torch.tensor([[1, 1, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 1]])
    assert torch.equal(running_parity(bits), expected)


def test_composed_config_yields_per_step_parity_with_longer_evaluation(make_config):
    cfg = make_config(["data=parity", "data.num_sequences=400", "data.batch_size=8"])
    datamodule = instantiate(cfg.data)
    assert datamodule.task == "classification" and datamodule.vocab_size == datamodule.output_dim == 2
    assert datamodule.target_mode == "next_step" and datamodule.max_sequence_length == 256
    lengths = {"train": 16, "val": 64, "test": 256}
    loaders = {
        "train": datamodule.train_dataloader(),
        "val": datamodule.val_dataloader(),
        "test": datamodule.test_dataloader(),
    }
    for split, loader in loaders.items():
        batch = next(iter(loader))
        assert batch["x"].shape == batch["y"].shape == (8, lengths[split])
        assert batch["x"].dtype == torch.long and set(batch["x"].unique().tolist()) == {0, 1}
        # y_t is the parity of x_0 .. x_t, recomputed step by step.
        parity = torch.zeros(8, dtype=torch.long)
        for t in range(lengths[split]):
            parity = parity ^ batch["x"][:, t]
            assert torch.equal(batch["y"][:, t], parity)
    assert len(datamodule.datasets["train"]) == 320 and len(datamodule.datasets["test"]) == 40
    # Both classes occur about equally often: chance accuracy is 0.5.
    assert abs(datamodule.datasets["test"].parity.float().mean().item() - 0.5) < 0.02


def test_same_seed_same_bits_other_seed_other_bits():
    a, b, c = (ParityDataModule(num_sequences=100, seed=seed) for seed in (1, 1, 2))
    assert torch.equal(a.datasets["val"].bits, b.datasets["val"].bits)
    assert not torch.equal(a.datasets["val"].bits, c.datasets["val"].bits)
    assert not torch.equal(a.datasets["train"].bits[:, :16], a.datasets["val"].bits[:80, :16])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_length": 0}, r"^train_length=0 must be a positive integer\.$"),
        ({"test_length": 8}, r"^test_length=8 must be >= train_length=16"),
        ({"num_sequences": 5}, r"^num_sequences=5 leaves a split without sequences"),
        ({"split": (0.5, 0.5)}, r"^split=\[0.5, 0.5\] must be three positive fractions"),
    ],
)
def test_bad_options_fail_in_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParityDataModule(**kwargs)


def test_bad_option_through_the_command_line_names_the_data_key(make_config):
    from train_hydra import ConfigError, train

    with pytest.raises(ConfigError, match=r"^data\.val_length=4 must be >= train_length=16"):
        train(make_config(["data=parity", "data.val_length=4"]))
