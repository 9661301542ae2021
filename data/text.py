"""Character-level language modelling (`data=text`): a text file, or a generated corpus when no
file is given (nothing is downloaded at run time).

The vocabulary is every character of the text. The character stream is split chronologically
into train/val/test segments; each sample is a window of `sequence_length` ids and, as targets,
the same window shifted by one character, so the model predicts the next character at every step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.antipodal import split_bounds
from data.datamodule import SplitDataModule, checked_split


class CharVocabulary:
    """A bijection between the characters of a text and the ids 0 .. size-1 (sorted by code point)."""

    def __init__(self, characters: str) -> None:
        self.characters = "".join(sorted(set(characters)))
        self.index = {character: i for i, character in enumerate(self.characters)}

    def __len__(self) -> int:
        return len(self.characters)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters {''.join(unknown)!r} are not in the vocabulary of {len(self)} characters.")
        return torch.tensor([self.index[character] for character in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.characters[int(i)] for i in ids)


SUBJECTS = ("the cat", "a dog", "the old sailor", "my sister", "the baker", "a small bird", "the king",
            "our teacher", "the river", "a tired horse")
VERBS = ("sees", "follows", "paints", "carries", "finds", "remembers", "watches", "builds")
OBJECTS = ("the red boat", "a green apple", "the tall tower", "an empty house", "the morning light",
           "a silver coin", "the quiet garden", "seven stones")
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
        raise ValueError(f"path={path} does not exist or is not a file; give a UTF-8 text file, or null for the generated corpus.")
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


class NextCharacterWindows(Dataset):
    """Windows of one segment [start, stop) of the id stream, `stride` apart: x = ids[s : s+L],
    y = ids[s+1 : s+L+1]; targets stay inside the segment."""

    def __init__(self, ids: torch.Tensor, start: int, stop: int, sequence_length: int, stride: int) -> None:
        self.ids = ids
        self.sequence_length = sequence_length
        self.starts = range(start, stop - sequence_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = self.starts[index]
        window = self.ids[start : start + self.sequence_length + 1]
        return {"x": window[:-1], "y": window[1:]}


class TextDataModule(SplitDataModule):
    """Next-character prediction over a text file or a generated corpus.

    Args:
        path: a UTF-8 text file; null generates `corpus_characters` characters of structured text.
        sequence_length: characters per sample.
        stride: characters between the starts of consecutive samples (null: sequence_length).
        split: chronological train/val/test fractions of the character stream.
        corpus_characters, seed: size and seed of the generated corpus (and of shuffling).
    """

    task = "classification"
    target_mode = "next_step"

    def __init__(
        self,
        path: str | None = None,
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
        for name, value in (("sequence_length", sequence_length), ("stride", stride),
                            ("corpus_characters", corpus_characters)):
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer.")
        split = checked_split(split, batch_size, num_workers)
        self.text = read_text_file(path) if path is not None else generate_corpus(corpus_characters, seed)
        self.bounds = split_bounds(len(self.text), split)
        shortest = min(stop - start for start, stop in self.bounds.values())
        if sequence_length + 1 > shortest:
            source = f"path={path}" if path is not None else f"corpus_characters={corpus_characters}"
            raise ValueError(
                f"sequence_length={sequence_length} is too long for {source}: a sample needs {sequence_length + 1} "
                f"characters but the shortest split has {shortest} (use more text or a shorter sequence_length)."
            )
        self.vocabulary = CharVocabulary(self.text)
        self.vocab_size = self.output_dim = len(self.vocabulary)
        self.ids = self.vocabulary.encode(self.text)
        self.sequence_length = sequence_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets = {
            name: NextCharacterWindows(self.ids, start, stop, sequence_length, stride)
            for name, (start, stop) in self.bounds.items()
        }
        self.save_hyperparameters({"path": path, "sequence_length": sequence_length, "stride": stride,
                                   "split": list(split), "batch_size": batch_size, "seed": seed})
