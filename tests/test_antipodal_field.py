"""antipodal_field: the antipodal process rendered on basis maps; rendering, determinism, splits and
windows, and the DataModule's declared shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import default_collate

from data.antipodal import AntipodalProcessConfig, generate_antipodal
from data.antipodal_field import AntipodalFieldDataModule, generate_antipodal_field, render_fields, smooth_basis_maps


def test_basis_maps_are_smooth_unit_rms_and_fields_render_them_linearly():
    rng = np.random.default_rng(0)
    basis = smooth_basis_maps(4, 2, 16, length_scale=2.0, rng=rng)
    assert basis.shape == (4, 2, 16, 16) and basis.dtype == np.float32
    np.testing.assert_allclose(np.sqrt((basis**2).mean(axis=(1, 2, 3))), 1.0, rtol=1e-5)
    # Smooth: neighbouring pixels are strongly correlated (white noise would give about 0).
    neighbour_correlation = np.corrcoef(basis[..., :-1].ravel(), basis[..., 1:].ravel())[0, 1]
    assert neighbour_correlation > 0.8
    observations = rng.normal(size=(50, 4))
    fields = render_fields(observations, basis, pixel_noise=0.0, rng=rng)
    assert fields.shape == (50, 2, 16, 16)
    np.testing.assert_allclose(fields, np.einsum("tk,kchw->tchw", observations, basis), rtol=1e-5, atol=1e-5)
    # The maps are independent, so each field determines its observation exactly.
    recovered = np.linalg.lstsq(basis.reshape(4, -1).T, fields.reshape(50, -1).T, rcond=None)[0].T
    np.testing.assert_allclose(recovered, observations, atol=1e-4)
    noisy = render_fields(observations, basis, pixel_noise=0.1, rng=rng)
    assert (noisy - fields).std() == pytest.approx(0.1, rel=0.05)


def test_fields_render_the_antipodal_process_with_its_regimes_and_transitions():
    process = AntipodalProcessConfig(T=400, seed=3)
    sequence = generate_antipodal_field(process, grid_size=8, pixel_noise=0.0)
    vector = generate_antipodal(process)
    assert sequence.x.shape == (400, 1, 8, 8)
    np.testing.assert_array_equal(sequence.observations, vector.x)
    np.testing.assert_array_equal(sequence.regime, vector.regime)
    np.testing.assert_array_equal(sequence.transition, vector.transition)
    np.testing.assert_allclose(sequence.x, np.einsum("tk,kchw->tchw", vector.x, sequence.basis), rtol=1e-4, atol=1e-6)


def test_same_seed_same_fields_different_seed_different_fields():
    a = generate_antipodal_field(AntipodalProcessConfig(T=200, seed=1), grid_size=8)
    b = generate_antipodal_field(AntipodalProcessConfig(T=200, seed=1), grid_size=8)
    c = generate_antipodal_field(AntipodalProcessConfig(T=200, seed=2), grid_size=8)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.basis, b.basis)
    assert not np.allclose(a.basis, c.basis) and not np.allclose(a.x, c.x)


@pytest.mark.parametrize("target_mode", ["last", "next_step"])
def test_no_time_index_appears_in_two_splits(target_mode):
    dm = AntipodalFieldDataModule(generator={"T": 1000}, history_length=10, target_mode=target_mode, grid_size=4)
    dm.setup()
    covered = {name: set(ds.covered_steps().tolist()) for name, ds in dm.datasets.items()}
    assert not covered["train"] & covered["val"] and not covered["val"] & covered["test"]
    assert not covered["train"] & covered["test"]
    for name, (start, stop) in dm.bounds.items():
        assert min(covered[name]) >= start and max(covered[name]) < stop
    assert dm.bounds == AntipodalFieldDataModule(generator={"T": 1000}).bounds


@pytest.mark.parametrize("target", ["field", "observation"])
def test_windows_targets_and_batches(target):
    last = AntipodalFieldDataModule(generator={"T": 500, "seed": 9}, history_length=7, grid_size=8, target=target)
    step = AntipodalFieldDataModule(
        generator={"T": 500, "seed": 9},
        history_length=7,
        grid_size=8,
        target=target,
        target_mode="next_step",
        batch_size=32,
    )
    last.setup()
    step.setup()
    fields = torch.as_tensor(last.sequence.x)
    targets = fields if target == "field" else torch.as_tensor(last.sequence.observations, dtype=torch.float32)
    s = last.bounds["val"][0] + 3
    item = last.datasets["val"][3]
    assert torch.equal(item["x"], fields[s : s + 7])
    assert torch.equal(item["y"], targets[s + 7])
    assert item["regime"].item() == last.sequence.regime[s + 7]
    assert item["transition"].item() == bool(last.sequence.transition[s + 7])
    item = step.datasets["val"][3]
    assert torch.equal(item["y"], targets[s + 1 : s + 8])
    assert item["regime"].shape == item["transition"].shape == (7,)
    batch = next(iter(step.train_dataloader()))
    assert set(batch) == {"x", "y", "regime", "transition"}
    assert batch["x"].shape == (32, 7, 1, 8, 8)
    assert batch["y"].shape == ((32, 7, 1, 8, 8) if target == "field" else (32, 7, 4))
    for windows in (last.datasets["val"], step.datasets["val"]):
        gathered, collated = windows.__getitems__([3, 0, 5]), default_collate([windows[i] for i in (3, 0, 5)])
        assert all(torch.equal(gathered[key], collated[key]) for key in collated)


def test_datamodule_declares_field_input_and_the_target_size(make_config):
    dm = instantiate(make_config(["data=antipodal_field", "data.channels=2", "data.grid_size=6"]).data)
    assert isinstance(dm, AntipodalFieldDataModule)
    assert dm.task == "regression" and dm.input_dim is None
    assert dm.input_shape == (2, 6, 6) and dm.output_dim == 72
    assert dm.process.p_switch == 0.05 and dm.history_length == 10  # the antipodal defaults
    assert dm.process.sigma_epsilon == 0.3 and dm.target_mode == "next_step"  # the field's own choices
    assert AntipodalFieldDataModule(target="observation").output_dim == 4


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"grid_size": 0}, "grid_size=0"),
        ({"grid_size": 2}, "grid_size=2 gives 4 values per field"),
        ({"channels": 0}, "channels=0"),
        ({"basis_length_scale": 0.0}, "basis_length_scale=0.0"),
        ({"pixel_noise": -0.1}, "pixel_noise=-0.1"),
        ({"target": "pixels"}, "target='pixels'"),
        ({"generator": {"p_switch": 1.5}}, "generator.p_switch=1.5"),
        ({"history_length": 3000}, "history_length=3000"),
    ],
)
def test_bad_arguments_fail_naming_the_argument(kwargs, key):
    with pytest.raises(ValueError) as error:
        AntipodalFieldDataModule(**kwargs)
    assert str(error.value).startswith(key) and "\n" not in str(error.value)
