"""Language modelling (`data=text`) on characters, words or BPE tokens (`data.tokenizer`): a text
file, or a generated corpus when no file is given (nothing is downloaded at run time).

The text is split chronologically into train/val/test segments of characters; each segment is
tokenized on its own (word and BPE vocabularies are learnt from the train segment only, see
data/tokenization.py). Each sample is a window of `sequence_length` tokens and, as targets, the same
window shifted by one token, so the model predicts the next token at every step. Each sample also
carries how many characters each target token covers, from which the objective logs bits per
character.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.antipodal import split_bounds
from data.datamodule import SplitDataModule, checked_split
from data.tokenization import Vocabulary, load_tokenizer, train_tokenizer

TOKENIZER_FILE = "tokenizer.json"  # where a run dir keeps its tokenizer (written by train_hydra.train)


SUBJECTS = (
    "the cat",
    "a dog",
    "the old sailor",
    "my sister",
    "the baker",
    "a small bird",
    "the king",
    "our teacher",
    "the river",
    "a tired horse",
)
VERBS = ("sees", "follows", "paints", "carries", "finds", "remembers", "watches", "builds")
OBJECTS = (
    "the red boat",
    "a green apple",
    "the tall tower",
    "an empty house",
    "the morning light",
    "a silver coin",
    "the quiet garden",
    "seven stones",
)
PLACES = ("near the sea", "in the city", "under the bridge", "at dawn", "by the mill", "on the hill")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def generate_corpus(num_characters: int, seed: int) -> str:
    """English-like text with structure at three scales for a model to learn: spelling (a small
    lexicon), grammar (subject-verb-object sentences, capitals, punctuation) and long-range order
    (numbered lines count upward, so the next number is predictable from the previous line)."""
    rng = np.random.default_rng(seed)
    pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
    lines, length, line_number = [], 0, 0
    while length < num_characters:
        sentences = []
        for _ in range(rng.integers(1, 4)):
            sentence = f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)}"
            if rng.random() < 0.5:
                sentence += f" {pick(PLACES)}"
            sentences.append(sentence[0].upper() + sentence[1:] + ("." if rng.random() < 0.8 else "!"))
        line = f"{NUMBERS[line_number % len(NUMBERS)]}: {' '.join(sentences)}\n"
        line_number += 1
        lines.append(line)
        length += len(line)
    return "".join(lines)[:num_characters]


def read_text_file(path: str | Path) -> str:
    """The UTF-8 content of `path`; a missing, unreadable, non-UTF-8 or empty file fails in one sentence."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"path={path} does not exist or is not a file; give a UTF-8 text file, or null for the generated corpus."
        )
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ValueError(f"path={path} cannot be read ({error.strerror}); give a readable UTF-8 text file.") from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"path={path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            "convert it to UTF-8 or give another file."
        ) from error
    if not text:
        raise ValueError(f"path={path} is empty; give a UTF-8 text file with enough characters for every split.")
    return text


class NextTokenWindows(Dataset):
    """Windows of one segment [start, stop) of the id stream, `stride` apart: x = ids[s : s+L],
    y = ids[s+1 : s+L+1] and `characters`, the characters each target token covers; targets stay
    inside the segment."""

    def __init__(
        self,
        ids: torch.Tensor,
        character_counts: torch.Tensor,
        start: int,
        stop: int,
        sequence_length: int,
        stride: int,
    ) -> None:
        self.ids = ids
        self.character_counts = character_counts
        self.sequence_length = sequence_length
        self.starts = range(start, stop - sequence_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = self.starts[index]
        window = self.ids[start : start + self.sequence_length + 1]
        characters = self.character_counts[start + 1 : start + self.sequence_length + 1]
        return {"x": window[:-1], "y": window[1:], "characters": characters}


class TextDataModule(SplitDataModule):
    """Next-token prediction over a text file or a generated corpus.

    Args:
        path: a UTF-8 text file; null generates `corpus_characters` characters of structured text.
        tokenizer: `char`, `word` or `bpe` (see data/tokenization.py).
        vocab_size: bpe: the vocabulary to learn (null: 512); word: keep the most frequent words
            (null: every train word); char: must be null.
        tokenizer_file: a saved tokenizer.json to use instead of building one (how a run is reloaded).
        sequence_length: tokens per sample.
        stride: tokens between the starts of consecutive samples (null: sequence_length).
        split: chronological train/val/test fractions of the character stream.
        corpus_characters, seed: size and seed of the generated corpus (and of shuffling).
    """

    task = "classification"
    target_mode = "next_step"

    def __init__(
        self,
        path: str | None = None,
        tokenizer: str = "char",
        vocab_size: int | None = None,
        tokenizer_file: str | None = None,
        sequence_length: int = 100,
        stride: int | None = None,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        batch_size: int = 64,
        num_workers: int = 0,
        corpus_characters: int = 200_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        stride = sequence_length if stride is None else stride
        for name, value in (
            ("sequence_length", sequence_length),
            ("stride", stride),
            ("corpus_characters", corpus_characters),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer.")
        split = checked_split(split, batch_size, num_workers)
        self.text = read_text_file(path) if path is not None else generate_corpus(corpus_characters, seed)
        character_bounds = split_bounds(len(self.text), split)
        segments = {name: self.text[start:stop] for name, (start, stop) in character_bounds.items()}
        self.vocabulary: Vocabulary = (
            load_tokenizer(tokenizer_file)
            if tokenizer_file is not None
            else train_tokenizer(tokenizer, segments["train"], self.text, vocab_size)
        )
        if self.vocabulary.kind != tokenizer:
            raise ValueError(
                f"tokenizer_file={tokenizer_file} holds a {self.vocabulary.kind} tokenizer but "
                f"tokenizer={tokenizer}; set tokenizer={self.vocabulary.kind}."
            )
        self.vocab_size = self.output_dim = len(self.vocabulary)
        # Each segment is tokenized on its own, so no token spans a split boundary.
        encoded = {name: self.vocabulary.encode_with_character_counts(text) for name, text in segments.items()}
        self.ids = torch.cat([ids for ids, _ in encoded.values()])
        self.character_counts = torch.cat([counts for _, counts in encoded.values()])
        self.bounds, start = {}, 0
        for name, (ids, _) in encoded.items():
            self.bounds[name] = (start, start + len(ids))
            start += len(ids)
        shortest = min(stop - start for start, stop in self.bounds.values())
        if sequence_length + 1 > shortest:
            source = f"path={path}" if path is not None else f"corpus_characters={corpus_characters}"
            raise ValueError(
                f"sequence_length={sequence_length} is too long for {source}: a sample needs {sequence_length + 1} "
                f"{tokenizer} tokens but the shortest split has {shortest} (use more text or a shorter sequence_length)."
            )
        self.sequence_length = sequence_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets = {
            name: NextTokenWindows(self.ids, self.character_counts, start, stop, sequence_length, stride)
            for name, (start, stop) in self.bounds.items()
        }
        self.save_hyperparameters(
            {
                "path": path,
                "tokenizer": tokenizer,
                "sequence_length": sequence_length,
                "stride": stride,
                "split": list(split),
                "batch_size": batch_size,
                "seed": seed,
            }
        )

    def save_tokenizer(self, run_dir: Path) -> None:
        """Write the tokenizer into the run dir, where sampling and reloading read it."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.vocabulary.save(run_dir / TOKENIZER_FILE)
