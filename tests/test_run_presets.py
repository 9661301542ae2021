"""Named experiments, debug presets, the config tree and evaluation without training, all through
the composed config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from train_hydra import CONFIG_DIR, compose_config, train
from training.config_tree import CONFIG_TREE_FILE, check_tags

QUIET = [
    "callbacks.rich_progress_bar=null",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "logger=none",
]
TINY = [*QUIET, "model=lstm", "model.hidden_dim=16", "data.generator.T=600", "data.batch_size=16"]
# Smaller data for the experiments' fast dev runs; each experiment keeps its own model and data group.
SMALL_DATA = {
    "text_char": ["data.corpus_characters=5000"],
    "text_word": ["data.corpus_characters=5000"],
    "text_bpe": ["data.corpus_characters=5000", "data.vocab_size=300"],
    "multiplication_2x2": ["data.num_pairs=500", "data.num_longer=50"],
    "multiplication_3x3": ["data.num_pairs=500", "data.num_longer=50"],
    "convgru_field": ["data.generator.T=300", "data.batch_size=8", "model.hidden_channels=4"],
}
EXPERIMENTS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_an_experiment_for_every_data_set_and_optimiser_preset():
    assert {
        "text_char",
        "text_word",
        "text_bpe",
        "multiplication_2x2",
        "multiplication_3x3",
        "convgru_field",
        "optim_conservative",
        "optim_aggressive",
        "optim_memory_constrained",
    } <= set(EXPERIMENTS)


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ("text_char", {"data._target_": "data.text.TextDataModule", "model.name": "lstm"}),
        (
            "multiplication_2x2",
            {
                "data.min_digits": 2,
                "data.max_digits": 2,
                "trainer.max_epochs": 100,
                "callbacks.early_stopping": None,
                "model.name": "latent_transformer",
            },
        ),
        (
            "multiplication_3x3",
            {"data.min_digits": 3, "data.max_digits": 3, "trainer.max_epochs": 50, "optim.scheduler": "cosine_warmup"},
        ),
        ("convgru_field", {"model.name": "convgru", "data._target_": "data.antipodal_field.AntipodalFieldDataModule"}),
        (
            "optim_conservative",
            {"optim.learning_rate": 1e-4, "optim.weight_decay": 1e-3, "trainer.gradient_clip_val": 0.5},
        ),
        (
            "optim_aggressive",
            {"optim.learning_rate": 5e-4, "optim.weight_decay": 1e-5, "trainer.gradient_clip_val": 2.0},
        ),
        ("optim_memory_constrained", {"data.batch_size": 8, "trainer.accumulate_grad_batches": 8}),
    ],
)
def test_experiment_composes_to_its_settings(tmp_path, experiment, expected):
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_survives_a_fast_dev_run(tmp_path, experiment):
    record = train(
        compose_config([f"experiment={experiment}", "debug=fdr", *QUIET, *SMALL_DATA.get(experiment, [])], tmp_path)
    )
    assert record["metrics"] and all(value == value for value in record["metrics"].values())  # no NaN


def test_debug_limit_runs_a_few_batches_per_epoch(tmp_path):
    cfg = compose_config(["debug=limit", *TINY], tmp_path)
    assert (cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches, cfg.trainer.max_epochs) == (4, 2, 2)
    train(cfg)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * 4


def test_debug_profiler_writes_its_report_into_the_run_dir(tmp_path):
    train(compose_config(["debug=profiler", *TINY], tmp_path))
    report = (tmp_path / "fit-profiler.txt").read_text()
    assert "run_training_epoch" in report and "Total" in report
    assert (tmp_path / "test-profiler.txt").is_file()


def test_debug_anomaly_turns_on_anomaly_detection(tmp_path):
    assert compose_config(["debug=anomaly"], tmp_path).trainer.detect_anomaly is True
    assert compose_config([], tmp_path).trainer.get("detect_anomaly", False) is False


def test_the_config_tree_is_saved_in_the_run_dir(tmp_path):
    train(compose_config(["debug=fdr", *TINY, "print_config=true", "optim.learning_rate=0.0123"], tmp_path))
    tree = (tmp_path / CONFIG_TREE_FILE).read_text()
    assert tree.startswith("CONFIG")
    assert "learning_rate: 0.0123" in tree and "name: lstm" in tree and "\x1b[" not in tree  # plain text
    assert "hydra" not in tree.split("paths", 1)[0]


def test_no_config_tree_with_print_config_false(tmp_path):
    train(compose_config(["debug=fdr", *TINY, "print_config=false"], tmp_path))
    assert not (tmp_path / CONFIG_TREE_FILE).exists()


def test_a_multirun_without_tags_is_refused_and_one_with_tags_starts(tmp_path):
    with pytest.raises(ValueError, match=r"^tags is empty; a multirun needs tags"):
        check_tags(compose_config(["tags=[]"], tmp_path), multirun=True)
    check_tags(compose_config(["tags=[lstm_sweep]"], tmp_path), multirun=True)
    check_tags(compose_config(["tags=[]"], tmp_path), multirun=False)  # a single run only warns


def test_train_false_evaluates_a_checkpoint_on_val_and_test(tmp_path):
    trained = train(compose_config([*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=3"], tmp_path / "run"))
    checkpoint = Path(trained["evaluated_checkpoint"])
    before = checkpoint.read_bytes()
    evaluated = train(compose_config([*TINY, "train=false", f"ckpt_path={checkpoint}"], tmp_path / "eval"))
    for key in ("val/loss", "val/mse", "test/loss", "test/mse"):
        assert evaluated["metrics"][key] == pytest.approx(trained["metrics"][key], rel=1e-6)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["evaluated_checkpoint"] == str(checkpoint)
    assert checkpoint.read_bytes() == before  # evaluation leaves the checkpoint alone
    assert not (tmp_path / "eval" / "checkpoints").exists()
