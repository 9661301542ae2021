"""Word and BPE tokens for data=text: exact round trips, vocabularies learnt from the train split
only, bits per character on one scale for every tokenizer, and the tokenizer saved in the run dir
and used again by reloading and sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import train_like_the_cli
from torch import nn

from data.text import TOKENIZER_FILE, TextDataModule, generate_corpus
from data.tokenization import (
    BPEVocabulary,
    WordVocabulary,
    load_tokenizer,
    train_tokenizer,
)
from train_hydra import ConfigError, load_run
from training.metrics import ClassificationMetrics
from visualization.sample_text import main as sample_main

UNICODE_TEXT = "naïve café — ∑ x² ≠ y\n\ttabs, 'quotes' and \"more\"\r\n  two spaces. "


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_every_tokenizer_round_trips_and_its_tokens_cover_every_character(kind, tmp_path):
    text = generate_corpus(4000, seed=0) + UNICODE_TEXT * 5
    vocabulary = train_tokenizer(kind, text, text, vocab_size=400 if kind == "bpe" else None)
    ids, counts = vocabulary.encode_with_character_counts(text)
    assert vocabulary.decode(ids) == text
    assert len(ids) == len(counts) and int(counts.sum()) == len(text)
    assert torch.equal(vocabulary.encode(text), ids)
    vocabulary.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert type(again) is type(vocabulary) and len(again) == len(vocabulary)
    assert torch.equal(again.encode(text), ids)
    if kind != "char":
        assert len(ids) < 0.6 * len(text)  # words and merges cover several characters per token


def test_bpe_and_word_vocabularies_are_learnt_from_the_train_split_only():
    train_text = "the cat sees the dog. " * 200
    held_out = "zebrafish quixotically " * 200
    bpe = train_tokenizer("bpe", train_text, train_text + held_out, vocab_size=300)
    words = train_tokenizer("word", train_text, train_text + held_out, vocab_size=None)
    assert len(bpe.encode(" zebrafish")) > 3 and len(bpe.encode(" cat")) == 1
    assert words.encode(" zebrafish").tolist() == [0] and words.decode(words.encode(" zebrafish")) == "<unk>"
    # Negative control: trained on the held-out text as well, both learn the word.
    assert len(BPEVocabulary.from_text(train_text + held_out, 300).encode(" zebrafish")) == 1
    assert WordVocabulary.from_text(train_text + held_out, None).encode(" zebrafish").tolist() != [0]


def test_unknown_words_still_count_the_characters_they_stand_for():
    words = WordVocabulary.from_text("one two three. ", vocab_size=None)
    ids, counts = words.encode_with_character_counts("one seventeen.")
    assert words.decode(ids) == "one<unk>." and counts.tolist() == [3, 10, 1]


def test_the_datamodule_learns_its_vocabulary_from_the_train_segment_and_keeps_splits_apart():
    datamodule = TextDataModule(tokenizer="bpe", vocab_size=300, corpus_characters=20000, sequence_length=16, seed=1)
    train_stop = datamodule.bounds["train"][1]
    train_text = datamodule.text[: int(0.8 * len(datamodule.text))]
    assert datamodule.vocabulary.decode(datamodule.ids[:train_stop]) == train_text
    assert datamodule.vocab_size == 300 == datamodule.output_dim
    sample = datamodule.datasets["val"][0]
    start = datamodule.datasets["val"].starts[0]
    assert torch.equal(sample["y"], datamodule.ids[start + 1 : start + 17])
    assert torch.equal(sample["characters"], datamodule.character_counts[start + 1 : start + 17])
    assert sample["characters"].float().mean() > 1.5


def test_bits_per_character_is_loss_over_ln2_for_characters_and_counts_characters_for_tokens():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 6, 10), torch.randint(0, 10, (4, 6))
    nats = nn.functional.cross_entropy(logits.reshape(-1, 10), target.reshape(-1), reduction="sum")
    metrics = ClassificationMetrics(10)
    metrics.update(logits, target, torch.ones_like(target))
    values = metrics.compute_and_reset()
    torch.testing.assert_close(values["bits_per_character"], values["loss"] / math.log(2))
    counts = torch.randint(1, 6, (4, 6))
    metrics.update(logits[:2], target[:2], counts[:2])
    metrics.update(logits[2:], target[2:], counts[2:])  # sums over batches, not a mean of batch ratios
    values = metrics.compute_and_reset()
    torch.testing.assert_close(values["bits_per_character"], nats / (math.log(2) * counts.sum()))
    assert not torch.allclose(values["bits_per_character"], values["loss"] / math.log(2))
    metrics.update(logits, target)  # data without character counts (multiplication): no bits per character
    assert "bits_per_character" not in metrics.compute_and_reset()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.vocab_size=100", r"^data\.vocab_size=100 is for word and bpe tokens"),
        (
            "data.tokenizer=sentencepiece",
            r"^data\.tokenizer='sentencepiece' is not allowed; choose one of: char, word, bpe\.",
        ),
    ],
)
def test_bad_tokenizer_settings_fail_in_one_sentence(make_config, override, message):
    from train_hydra import train

    with pytest.raises(ConfigError, match=message):
        train(make_config(["model=lstm", "data=text", "data.corpus_characters=5000", override]))


def test_a_bpe_run_saves_its_tokenizer_logs_bits_per_character_and_samples_with_it(tmp_path):
    run_dir = tmp_path / "run"
    record = train_like_the_cli(
        [
            "model=lstm",
            "data=text",
            "data.tokenizer=bpe",
            "data.vocab_size=300",
            "data.corpus_characters=20000",
            "data.sequence_length=32",
            "model.hidden_dim=16",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "logger=csv",
            "callbacks.rich_progress_bar=null",
            "trainer.enable_model_summary=false",
        ],
        run_dir,
    )
    metrics = record["metrics"]
    assert metrics["val/bits_per_character"] < metrics["val/loss"] / math.log(2)  # >1 character per token
    assert json.loads((run_dir / TOKENIZER_FILE).read_text())["model"]["type"] == "BPE"
    run = load_run(run_dir)
    assert len(run.datamodule.vocabulary) == 300
    text = sample_main(["--experiment", str(run_dir), "--length", "20", "--prompt", "The cat"])
    assert text.startswith("The cat") and len(text) > len("The cat") + 20  # tokens of several characters
    (run_dir / TOKENIZER_FILE).write_text("not json")  # reloading reads the saved file, not a retrained one
    with pytest.raises(ConfigError, match=r"^data\.tokenizer_file=\S+tokenizer\.json is not a readable tokenizer"):
        load_run(run_dir)


def test_bench_text_reports_tokens_and_the_characters_they_cover(capsys):
    from benchmarks.bench_text import main as bench_main

    table = bench_main(["--batch-sizes", "2", "--steps", "1", "--tokenizer", "word", "--threads", "1"])
    tokens_table, characters_table = table.split("characters/s")
    per_token = float(characters_table.split("B=2: ")[1].split(" ")[0])
    assert per_token > 3  # a word with its leading space
    tokens = float(tokens_table.split("| torch.nn.LSTM | ")[1].split(" ")[0].replace(",", ""))
    characters = float(characters_table.split("| torch.nn.LSTM | ")[1].split(" ")[0].replace(",", ""))
    assert characters == pytest.approx(tokens * per_token, rel=0.01, abs=1)
