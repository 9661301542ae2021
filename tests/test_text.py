"""Character-level language modelling: the text DataModule, the classification objective, a real
learning run and sampling from its checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import train_like_the_cli
from torch import nn

from data.text import TextDataModule, generate_corpus
from data.tokenization import CharVocabulary
from lightning_module import SeamGatedLightningModule
from models.generation import sample_tokens
from train_hydra import ConfigError, compose_config, train
from visualization.sample_text import main as sample_main

SMALL_TEXT = ["data=text", "data.corpus_characters=20000", "data.sequence_length=50"]


def test_text_to_ids_to_text_is_exact(tmp_path):
    text = "naïve café — ∑ x² ≠ y\n\ttabs, 'quotes' and \"more\"\r\n" * 20
    path = tmp_path / "unicode.txt"
    path.write_text(text, encoding="utf-8", newline="")
    datamodule = TextDataModule(path=str(path), sequence_length=10)
    assert datamodule.vocabulary.decode(datamodule.ids) == text
    assert datamodule.vocab_size == len(set(text)) == datamodule.output_dim
    corpus = generate_corpus(5000, seed=1)
    vocabulary = CharVocabulary(corpus)
    assert vocabulary.decode(vocabulary.encode(corpus)) == corpus


def test_generated_corpus_is_seeded_and_structured():
    first, again, other = generate_corpus(3000, 7), generate_corpus(3000, 7), generate_corpus(3000, 8)
    assert first == again != other and len(first) == 3000
    lines = first.split("\n")[:-1]
    assert lines[0].startswith("one: ") and lines[1].startswith("two: ")  # numbered lines count upward
    assert all(line.rstrip()[-1] in ".!" for line in lines)


def test_targets_are_the_next_characters_and_no_window_leaves_its_split():
    datamodule = TextDataModule(corpus_characters=5000, sequence_length=20, stride=7, seed=3)
    for name, (start, stop) in datamodule.bounds.items():
        dataset = datamodule.datasets[name]
        assert len(dataset) > 0
        for index in range(len(dataset)):
            sample = dataset[index]
            first = dataset.starts[index]
            assert start <= first and first + 21 <= stop
            assert torch.equal(sample["x"], datamodule.ids[first : first + 20])
            assert torch.equal(sample["y"], datamodule.ids[first + 1 : first + 21])
    assert datamodule.datasets["train"].starts[1] - datamodule.datasets["train"].starts[0] == 7


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"^data\.path=\S+ does not exist or is not a file; give a UTF-8 text file, or null"),
        (b"", r"^data\.path=\S+ is empty; give a UTF-8 text file"),
        (b"caf\xe9 latin-1 text " * 50, r"^data\.path=\S+ is not UTF-8 text \(byte 0xe9 at offset 3\)"),
        (b"too short", r"^data\.sequence_length=100 is too long for path=\S+: a sample needs 101 char tokens"),
    ],
)
def test_a_bad_text_file_fails_in_one_sentence_naming_it(make_config, tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as error:
        train(make_config(["model=lstm", "data=text", f"data.path={path}"]))
    assert "\n" not in str(error.value) and str(error.value).endswith(".")


def test_classification_loss_uses_label_smoothing_and_metrics_are_the_unsmoothed_truth():
    torch.manual_seed(0)
    module = SeamGatedLightningModule(
        "lstm",
        {"hidden_dim": 8},
        task="classification",
        vocab_size=5,
        output_dim=5,
        target_mode="next_step",
        objective_kwargs={"label_smoothing": 0.2},
    )
    batch = {"x": torch.randint(0, 5, (3, 7)), "y": torch.randint(0, 5, (3, 7))}
    logits = module.model(batch["x"]).reshape(-1, 5)
    target = batch["y"].reshape(-1)
    expected = nn.functional.cross_entropy(logits, target, label_smoothing=0.2)
    loss, _ = module.objective.training_loss(module.scored_prediction, batch, progress=0.0)
    torch.testing.assert_close(loss, expected)
    module.objective.update("val", module.scored_prediction, batch)
    values = module.objective.compute_and_reset("val")
    true_cross_entropy = nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(values["loss"], true_cross_entropy)
    torch.testing.assert_close(values["perplexity"], true_cross_entropy.exp())
    torch.testing.assert_close(values["accuracy"], (logits.argmax(-1) == target).float().mean())


def test_label_smoothing_is_refused_for_regression_data(make_config):
    with pytest.raises(ConfigError, match=r"^objective\.label_smoothing=0\.1 applies to classification and seq2seq"):
        train(make_config(["objective.label_smoothing=0.1", "debug=fdr"]))


@pytest.fixture(scope="module")
def trained_text_run(tmp_path_factory):
    """An LSTM trained for 4 short epochs on the generated corpus, and the same model untrained."""
    base = [
        "model=lstm",
        "data=text",
        "data.corpus_characters=60000",
        "callbacks.rich_progress_bar=null",
        "trainer.enable_model_summary=false",
        "logger=csv",
    ]
    untrained_dir = tmp_path_factory.mktemp("untrained")
    untrained = train(compose_config([*base, "train=false"], untrained_dir))
    run_dir = tmp_path_factory.mktemp("trained")
    trained = train_like_the_cli([*base, "trainer.max_epochs=4", "optim.learning_rate=1e-2"], run_dir)
    return untrained, trained, run_dir


def test_validation_perplexity_falls_by_a_clear_margin_after_a_short_run(trained_text_run):
    untrained, trained, _ = trained_text_run
    vocab_size = len(CharVocabulary(generate_corpus(60000, 42)))
    before, after = untrained["metrics"]["test/perplexity"], trained["metrics"]["val/perplexity"]
    assert 0.5 * vocab_size < before < 2 * vocab_size  # an untrained model is close to uniform
    assert after < 0.35 * before, (before, after)
    assert trained["metrics"]["test/perplexity"] == pytest.approx(math.exp(trained["metrics"]["test/loss"]), rel=1e-4)
    assert trained["metrics"]["val/accuracy"] > 0.3


def test_sampling_from_the_trained_checkpoint_yields_only_vocabulary_characters(trained_text_run, capsys):
    _, _, run_dir = trained_text_run
    text = sample_main(["--experiment", str(run_dir), "--length", "120", "--prompt", "Th", "--temperature", "0.7"])
    vocabulary = set(generate_corpus(60000, 42))
    assert text.startswith("Th") and len(text) == 122 and set(text) <= vocabulary
    assert capsys.readouterr().out.strip() == text.strip()
    greedy = [
        sample_main(["--experiment", str(run_dir), "--length", "40", "--temperature", "0", "--seed", str(seed)])
        for seed in (1, 2)
    ]
    assert greedy[0] == greedy[1]  # temperature 0 is deterministic
    with pytest.raises(SystemExit):
        sample_main(["--experiment", str(run_dir), "--prompt", "ZQ#"])  # characters outside the vocabulary
    with pytest.raises(SystemExit):
        sample_main(["--experiment", str(run_dir / "checkpoints")])  # not a run directory


def test_sample_tokens_draws_from_the_temperature_scaled_distribution():
    class FixedLogits(nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.tensor([0.0, 1.0, 2.0]).expand(*ids.shape, 3)

    drawn = sample_tokens(
        FixedLogits(), torch.tensor([0]), 4000, temperature=2.0, generator=torch.Generator().manual_seed(0)
    )
    frequencies = torch.bincount(drawn, minlength=3).float() / len(drawn)
    torch.testing.assert_close(frequencies, torch.softmax(torch.tensor([0.0, 0.5, 1.0]), 0), atol=0.03, rtol=0)
    assert torch.equal(sample_tokens(FixedLogits(), torch.tensor([0]), 5, temperature=0), torch.full((5,), 2))


@pytest.mark.parametrize("model", ["lstm", "gru", "rnn", "z2_delta"])
def test_every_token_model_runs_on_text(make_config, model):
    record = train(make_config([f"model={model}", *SMALL_TEXT, "debug=fdr"]))
    assert {"val/loss", "val/perplexity", "val/accuracy", "test/perplexity"} <= set(record["metrics"])
    assert all(math.isfinite(value) for value in record["metrics"].values())
