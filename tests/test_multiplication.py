"""Multiplication data (tokenizer, layout, splits, validation), training both transformers on it
through the real training path, a real learning test, and the comparison command."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_like_the_cli

from data.datamodule import IGNORE_INDEX
from data.multiplication import MultiplicationDataModule, MultiplicationTokenizer, sample_operand_pairs
from lightning_module import SeamGatedLightningModule
from train_hydra import ConfigError, instantiate_from, train
from training.decoding import greedy_decode
from visualization import compare_transformers

TOKENIZER = MultiplicationTokenizer()
TINY_MODEL = ["model.d_model=32", "model.num_heads=2", "model.num_layers=2"]
QUIET = [
    "callbacks.rich_progress_bar=null",
    "callbacks.lr_monitor=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def test_tokenizer_round_trips_and_writes_digits_least_significant_first():
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(TOKENIZER.characters) for _ in range(rng.randint(0, 30)))
        assert TOKENIZER.decode(TOKENIZER.encode(text)) == text
    assert TOKENIZER.problem(12, 34) == ("21*43=", "8040")  # 12 x 34 = 0408, reversed
    assert TOKENIZER.problem(0, 7) == ("0*7=", "00")
    assert TOKENIZER.decode_number(TOKENIZER.encode("8040")) == 408
    assert TOKENIZER.decode_number(TOKENIZER.encode("80=0")) is None  # not a well-formed number
    assert TOKENIZER.decode_number([]) is None
    with pytest.raises(ValueError, match=r"^characters '\+' are not in the vocabulary"):
        TOKENIZER.encode("1+2")


def test_splits_share_no_operand_pair_and_respect_the_digit_ranges():
    datamodule = MultiplicationDataModule(min_digits=1, max_digits=3, num_pairs=3000, num_longer=200, seed=5)
    datamodule.setup()
    pairs = {name: set(datamodule.pairs[name]) for name in ("train", "val", "test", "longer")}
    assert [len(pairs[name]) for name in ("train", "val", "test", "longer")] == [2400, 300, 300, 200]
    for first in pairs:
        for second in pairs:
            assert first == second or not pairs[first] & pairs[second], (first, second)
    digits = {len(str(operand)) for name in ("train", "val", "test") for pair in pairs[name] for operand in pair}
    assert digits == {1, 2, 3}
    assert {len(str(operand)) for pair in pairs["longer"] for operand in pair} == {4}
    again = MultiplicationDataModule(min_digits=1, max_digits=3, num_pairs=3000, num_longer=200, seed=5)
    again.setup()
    assert again.pairs == datamodule.pairs  # seeded


def test_a_small_operand_space_is_used_whole():
    pairs = sample_operand_pairs(500, 1, 1, np.random.default_rng(0))
    assert len(pairs) == len(set(pairs)) == 100 and set(pairs) == {(a, b) for a in range(10) for b in range(10)}


def test_batches_score_only_answer_tokens_and_flag_the_longer_operands():
    datamodule = MultiplicationDataModule(
        min_digits=1, max_digits=2, num_pairs=400, num_longer=50, batch_size=500, seed=0
    )
    datamodule.setup()
    assert datamodule.max_sequence_length == 4 * 3 + 1
    test = next(iter(datamodule.test_dataloader()))
    assert test["longer"].sum() == 50 and test["x"].shape[1] == datamodule.max_sequence_length
    for x, y, (a, b) in zip(test["x"], test["y"], test["operands"].tolist()):
        prompt, answer = TOKENIZER.problem(a, b)
        scored = y != IGNORE_INDEX
        assert TOKENIZER.decode(y[scored]) == answer
        assert scored.nonzero().min() == len(prompt) - 1  # the separator predicts the first answer digit
        assert TOKENIZER.decode(x[: len(prompt)]) == prompt
        # Teacher forcing: every answer token but the last is also the next input.
        assert torch.equal(x[1:][scored[:-1]][: len(answer) - 1], y[scored][:-1])
    assert not next(iter(datamodule.train_dataloader()))["longer"].any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_digits": 0}, "min_digits=0 is not allowed; it must lie in [1, 18]."),
        ({"min_digits": 3, "max_digits": 2}, "max_digits=2 is not allowed; it must lie in [min_digits=3, 17]"),
        (
            {"max_digits": 2, "longer_digits": 2},
            "longer_digits=2 is not allowed; it must lie in [max_digits + 1 = 3, 18].",
        ),
        ({"num_pairs": 0}, "num_pairs=0 is not allowed; it must be a positive integer."),
        ({"split": [0.5, 0.5]}, "split=[0.5, 0.5] must be three positive fractions"),
        ({"max_digits": 1, "num_pairs": 5}, "num_pairs=5 leaves a split empty"),
    ],
)
def test_bad_data_options_fail_in_one_sentence(kwargs, message):
    with pytest.raises(ValueError) as error:
        MultiplicationDataModule(**kwargs)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("model", ["transformer", "latent_transformer"])
def test_fast_dev_run_on_multiplication(make_config, model):
    record = train(
        make_config([f"model={model}", "data=multiplication", "data.num_pairs=500", "debug=fdr", *TINY_MODEL])
    )
    for key in ("val/loss", "val/exact_match", "val/digit_accuracy", "test/loss", "test/exact_match"):
        assert 0.0 <= record["metrics"][key] < float("inf"), key


def test_multiplication_trains_with_warmup_cosine_and_scheduled_sampling(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(
        [
            "model=latent_transformer",
            "data=multiplication",
            "data.num_pairs=400",
            "data.batch_size=32",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "optim.warmup_fraction=0.25",
            "objective.scheduled_sampling=linear",
            "objective.sampling_max_rate=0.5",
            "test=false",
            *TINY_MODEL,
            *QUIET,
        ]
    )
    assert cfg.optim.scheduler == "cosine_warmup"
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard")).Reload()
    rates = [event.value for event in events.Scalars("train/sampling_rate")]
    assert len(rates) == 20 and rates[0] == 0.0 and rates == sorted(rates) and rates[-1] == pytest.approx(0.5 * 19 / 20)
    learning_rates = [event.value for event in events.Scalars("train/lr")]
    peak = learning_rates.index(max(learning_rates))  # 5 warm-up steps of 20, then cosine decay
    assert (
        peak == 4
        and learning_rates[:5] == sorted(learning_rates[:5])
        and learning_rates[4:] == sorted(learning_rates[4:], reverse=True)
    )


def test_seq2seq_options_are_refused_on_regression_data(make_config):
    with pytest.raises(ConfigError) as error:
        train(make_config(["objective.scheduled_sampling=cosine"]))
    assert str(error.value) == (
        "objective.scheduled_sampling=cosine applies to seq2seq tasks only; leave it at none for regression data."
    )


def test_too_few_positions_for_the_longer_test_set_fail_before_training(make_config):
    with pytest.raises(ConfigError) as error:
        train(
            make_config(["model=latent_transformer", "data=multiplication", "data.max_digits=3", "model.max_length=20"])
        )
    assert str(error.value) == (
        "model.max_length=20 is too short for inputs of 17 steps plus 8 latent tokens; raise it to at least 25."
    )


@pytest.fixture
def one_thread():
    """Matrices this small gain nothing from a second thread, and on a busy shared CPU the threads
    wait on each other: one thread keeps the learning test at seconds instead of minutes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model", ["transformer", "latent_transformer"])
def test_a_tiny_model_learns_one_digit_multiplication(make_config, model, one_thread):
    """1 x 1 has only 100 facts, so the pairs held out for val and test are facts the model never sees;
    learning is measured on the training pairs, by greedy decoding through the objective's metrics."""
    epochs = 150  # 5 steps each: ~4 s on one CPU thread
    cfg = make_config(
        [
            f"model={model}",
            "data=multiplication",
            "data.min_digits=1",
            "data.max_digits=1",
            "data.batch_size=16",
            "optim.learning_rate=3e-3",
            f"trainer.max_epochs={epochs}",
            f"trainer.check_val_every_n_epoch={epochs}",
            "callbacks.early_stopping=null",
            "logger=none",
            "test=false",
            *TINY_MODEL,
            *QUIET,
        ]
    )
    record = train(cfg)
    module = SeamGatedLightningModule.load_from_checkpoint(record["evaluated_checkpoint"], weights_only=True).eval()
    datamodule = instantiate_from(cfg, "data")
    datamodule.setup()
    right, total = 0, 0
    for batch in datamodule.train_dataloader():
        module.objective.update("val", module.scored_prediction, batch)
        decoded = greedy_decode(module.model, batch["x"], batch["y"])
        for answer, (a, b) in zip(decoded, batch["operands"].tolist()):
            number = TOKENIZER.decode_number(answer[answer != IGNORE_INDEX])
            assert number is not None  # well-formed
            right, total = right + (number == a * b), total + 1
    assert total == 80 and right / total >= 0.95
    assert module.objective.compute_and_reset("val")["exact_match"].item() == pytest.approx(right / total)


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> list[Path]:
    """A one-epoch run of each transformer on the same small multiplication data, as the CLI writes them."""
    runs = []
    for model in ("transformer", "latent_transformer"):
        run_dir = tmp_path_factory.mktemp("runs") / model
        train_like_the_cli(
            [
                f"model={model}",
                "data=multiplication",
                "data.num_pairs=300",
                "data.num_longer=40",
                "trainer.max_epochs=1",
                "logger=none",
                *TINY_MODEL,
                *QUIET,
            ],
            run_dir,
        )
        runs.append(run_dir)
    return runs


def test_compare_transformers_prints_size_and_accuracy_of_both_runs(finished_runs, capsys):
    rows = compare_transformers.main([str(run) for run in finished_runs])
    table = capsys.readouterr().out
    assert "| transformer (transformer) |" in table and "| latent_transformer (latent_transformer) |" in table
    assert rows[1]["parameters"] - rows[0]["parameters"] == 8 * 32  # the latent tokens
    for row in rows:
        assert {"val/loss", "val/exact_match", "test/exact_match", "test/exact_match_longer"} <= set(row)
        assert row["exact_match_per_million_parameters"] == pytest.approx(
            row["test/exact_match"] * 1e6 / row["parameters"]
        )
    # The evaluation reproduces the metrics the run reported for the same checkpoint.
    reported = json.loads((finished_runs[0] / "metrics.json").read_text())["metrics"]
    assert rows[0]["test/exact_match"] == pytest.approx(reported["test/exact_match"])
    assert rows[0]["val/loss"] == pytest.approx(reported["val/loss"])


def last_error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_compare_transformers_refuses_missing_corrupt_and_mismatched_runs(finished_runs, tmp_path, capsys):
    transformer, latent = finished_runs
    with pytest.raises(SystemExit):
        compare_transformers.main([str(transformer), str(tmp_path / "missing")])
    assert last_error_line(capsys).endswith(
        f"run directory {tmp_path / 'missing'} does not exist; pass directories made by train_hydra.py."
    )

    other_data = shutil.copytree(latent, tmp_path / "other_data")
    config = other_data / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("num_longer: 40", "num_longer: 30"))
    with pytest.raises(SystemExit):
        compare_transformers.main([str(transformer), str(other_data)])
    assert last_error_line(capsys).endswith(
        f"runs {transformer} and {other_data} were trained on different data (data.num_longer: 40 vs 30); "
        "compare runs of the same data."
    )

    corrupt = shutil.copytree(transformer, tmp_path / "corrupt")
    (corrupt / "metrics.json").unlink()  # so the (corrupted) last.ckpt is the one loaded
    (corrupt / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        compare_transformers.main([str(corrupt)])
    assert "checkpoints/last.ckpt is not a readable checkpoint (" in last_error_line(capsys)

    (corrupt / ".hydra" / "config.yaml").unlink()
    with pytest.raises(SystemExit):
        compare_transformers.main([str(corrupt)])
    assert last_error_line(capsys).endswith(
        f"run directory {corrupt} has no .hydra/config.yaml; pass a directory made by train_hydra.py."
    )
