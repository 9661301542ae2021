"""The model contract (models/contract.py, docs/model_contract.md): registration checks it, the
training layer reads it, errors are routed by the key they carry, and a new model needs only
one file and one YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from models import OptionError, SequenceModel, build_model, register_model
from models.registry import _REGISTRY
from train_hydra import ConfigError, compose_config, train

TOY = Path(__file__).resolve().parent / "toy"


@pytest.fixture
def registry_snapshot():
    """Models a test registers are removed again, so other tests see the real registry."""
    before = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)


def test_registration_refuses_a_class_outside_the_contract(registry_snapshot):
    with pytest.raises(ValueError, match="must subclass models.contract.SequenceModel"):
        register_model("plain_module")(type("Plain", (nn.Module,), {"supported_tasks": ("regression",)}))
    with pytest.raises(ValueError, match="supported_tasks must be a non-empty subset"):
        register_model("no_tasks")(type("NoTasks", (SequenceModel,), {}))
    with pytest.raises(ValueError, match="supported_inputs must be a non-empty subset"):
        register_model("bad_inputs")(
            type("BadInputs", (SequenceModel,), {"supported_tasks": ("regression",), "supported_inputs": ("images",)})
        )
    assert {"plain_module", "no_tasks", "bad_inputs"}.isdisjoint(_REGISTRY)


def test_a_model_that_declares_only_its_tasks_gets_the_documented_defaults():
    model = type("Minimal", (SequenceModel,), {"supported_tasks": ("regression",)})()
    assert model.supported_inputs == ("vectors",)
    assert not model.needs_reference_process and not model.reads_prompt_separator
    assert not model.sees_future_steps and model.extra_length == 0
    model.check_input_length(10**9)  # no length limit


def test_contract_entries_of_the_real_models():
    lstm = build_model("lstm", input_dim=2, output_dim=2, bidirectional=True)
    assert lstm.sees_future_steps and not build_model("lstm", input_dim=2, output_dim=2).sees_future_steps
    latent = build_model("latent_transformer", vocab_size=5, output_dim=5, num_latent_tokens=3, max_length=10)
    assert latent.reads_prompt_separator and latent.extra_length == 3
    with pytest.raises(ValueError, match="max_length=10 is too short for inputs of 8 steps plus 3 latent tokens"):
        latent.check_input_length(8)


def test_option_errors_are_routed_by_their_key_not_their_text(tmp_path, registry_snapshot):
    """A model error whose text starts with an optim key is still the model's; an OptionError
    names its group by its key even when the text names something else."""

    class Picky(SequenceModel):
        supported_tasks = ("regression",)

        def __init__(self, output_dim: int, input_dim: int, width: int = 1) -> None:
            super().__init__()
            if width == 2:
                raise ValueError("learning_rate=... is what this model's own message happens to start with.")
            if width == 3:
                raise OptionError("width", "width=3 is not a width this model can use; choose 1 or 2.")

    register_model("picky")(Picky)
    base = [
        "model=toy_mean",
        f"hydra.searchpath=[file://{TOY / 'configs'}]",
        "++model.name=picky",
        "~model.init_scale",
        "data.generator.T=300",
        "debug=fdr",
        "logger=none",
        "callbacks=none",
    ]
    with pytest.raises(ConfigError) as error:
        train(compose_config([*base, "+model.width=2"], tmp_path))
    assert str(error.value).startswith("model.learning_rate=...")
    with pytest.raises(ConfigError) as error:
        train(compose_config([*base, "+model.width=3"], tmp_path))
    assert str(error.value) == "model.width=3 is not a width this model can use; choose 1 or 2."
    with pytest.raises(ConfigError) as error:
        train(compose_config([*base, "optim.learning_rate=-1"], tmp_path))
    assert str(error.value) == "optim.learning_rate=-1 must be > 0."


def test_a_toy_model_from_one_file_and_one_yaml_trains_through_the_composed_config(tmp_path, registry_snapshot):
    import tests.toy.toy_mean  # noqa: F401  (registers toy_mean, as a new model file in models/ would)

    cfg = compose_config(
        [
            "model=toy_mean",
            f"hydra.searchpath=[file://{TOY / 'configs'}]",
            "data.generator.T=300",
            "debug=fdr",
            "logger=none",
            "callbacks=none",
        ],
        tmp_path,
    )
    assert cfg.model.name == "toy_mean" and cfg.model.init_scale == 0.5
    record = train(cfg)
    assert record["model"] == "toy_mean" and record["num_parameters"] == 1 + 4 * 4
    assert torch.isfinite(torch.tensor(record["metrics"]["test/mse"]))
    assert json.loads((tmp_path / "metrics.json").read_text())["model"] == "toy_mean"
