"""Training-split augmentation: val and test batches untouched, train windows augmented at the
configured rate with symmetric noise of the configured size, shifts within max_shift, the same draws
on every pass, and field data augmented per pixel."""

from __future__ import annotations

import pytest
import torch

from train_hydra import ConfigError, instantiate_from

SMALL = ["data.generator.T=3000", "data.batch_size=50"]


def datamodule(make_config, *overrides):
    module = instantiate_from(make_config([*SMALL, *overrides]), "data")
    module.setup("fit")
    return module


def augment(noise_std=0.0, max_shift=0, prob=1.0):
    return [
        f"data.augmentation.noise_std={noise_std}",
        f"data.augmentation.max_shift={max_shift}",
        f"data.augmentation.augmentation_prob={prob}",
    ]


def stacked(loader):
    batches = list(loader)
    return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}


def test_val_and_test_batches_are_untouched(make_config):
    plain = datamodule(make_config)
    augmented = datamodule(make_config, *augment(noise_std=0.5, max_shift=5))
    for name in ("val_dataloader", "test_dataloader"):
        expected, got = stacked(getattr(plain, name)()), stacked(getattr(augmented, name)())
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    # Positive control: the training batches of the same module do change.
    assert not torch.equal(stacked(augmented.train_dataloader())["x"], stacked(plain.train_dataloader())["x"])


def test_train_windows_are_augmented_at_the_configured_rate_with_symmetric_noise_of_that_size(make_config):
    plain = stacked(datamodule(make_config).train_dataloader())
    augmented = stacked(datamodule(make_config, *augment(noise_std=0.1, prob=0.3)).train_dataloader())
    changed = (augmented["x"] != plain["x"]).flatten(1).any(dim=1)
    rate, count = changed.float().mean().item(), len(changed)
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / count) ** 0.5, (rate, count)
    noise = (augmented["x"] - plain["x"])[changed]
    assert abs(noise.std().item() - 0.1) < 0.005
    assert abs(noise.mean().item()) < 0.003 and abs((noise**3).mean().item()) < 1e-4  # symmetric: odd moments ~ 0
    torch.testing.assert_close(augmented["y"], plain["y"], rtol=0, atol=0)  # targets stay clean


def test_a_shifted_window_is_a_real_window_at_most_max_shift_away_with_its_own_targets(make_config):
    module = datamodule(make_config, *augment(max_shift=3))
    windows = module.datasets["train"]
    loader = module.train_dataloader()
    order = list(loader.sampler)
    shifted = [loader.dataset[key] for key in order[:200]]
    offsets = []
    for (index, _), item in zip(order, shifted):
        matches = [
            j
            for j in range(max(0, index - 3), min(len(windows), index + 4))
            if torch.equal(windows[j]["x"], item["x"]) and torch.equal(windows[j]["y"], item["y"])
        ]
        assert matches, index
        offsets.append(matches[0] - index)
    assert set(offsets) == {-3, -2, -1, 0, 1, 2, 3}


def test_the_same_epoch_gives_the_same_augmented_batches_and_the_next_epoch_others(make_config):
    module = datamodule(make_config, *augment(noise_std=0.1, max_shift=2, prob=0.5))
    loader = module.train_dataloader()
    first, again = stacked(loader)["x"], stacked(loader)["x"]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    loader.sampler.set_epoch(1)
    assert not torch.equal(stacked(loader)["x"], first)


def test_field_data_get_noise_per_pixel_on_the_training_split_only(make_config):
    field = ["data=antipodal_field", "data.grid_size=6", "data.generator.T=600"]
    plain = datamodule(make_config, *field)
    augmented = datamodule(make_config, *field, *augment(noise_std=0.2))
    train_noise = stacked(augmented.train_dataloader())["x"] - stacked(plain.train_dataloader())["x"]
    assert train_noise.shape[2:] == (1, 6, 6) and abs(train_noise.std().item() - 0.2) < 0.01
    torch.testing.assert_close(stacked(augmented.val_dataloader())["x"], stacked(plain.val_dataloader())["x"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.augmentation.noise_std=-1", "data.augmentation.noise_std=-1 must be >= 0"),
        ("data.augmentation.augmentation_prob=1.5", "data.augmentation.augmentation_prob=1.5 must lie in [0, 1]"),
        ("data.augmentation.augmentation_prob=0.5", "augmentation_prob=0.5 has nothing to apply"),
    ],
)
def test_bad_augmentation_values_fail_in_one_sentence_naming_the_key(make_config, override, message):
    with pytest.raises(ConfigError) as error:
        instantiate_from(make_config([override]), "data")
    assert message in str(error.value) and "\n" not in str(error.value)
