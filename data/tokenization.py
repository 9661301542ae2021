"""Tokenizers of `data=text`: characters, words or byte-level BPE (`data.tokenizer`).

All three share one interface: `encode(text)` gives token ids, `encode_with_character_counts(text)`
also gives how many characters of the text each token covers (so that a loss in nats per token can
be turned into bits per character, the one scale on which char, word and BPE runs compare),
`decode(ids)`, `len()` and `save(path)`. `train_tokenizer` builds one from the train split only;
`load_tokenizer` reads a saved one back, so a run's sampling and reloading use exactly the
tokens it was trained on.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

TOKENIZERS = ("char", "word", "bpe")
DEFAULT_BPE_VOCAB_SIZE = 512


class CharVocabulary:
    """A bijection between the characters of a text and the ids 0 .. size-1 (sorted by code point)."""

    kind = "char"

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

    def encode_with_character_counts(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.encode(text)
        return ids, torch.ones_like(ids)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.characters[int(i)] for i in ids)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"kind": self.kind, "characters": self.characters}))


# A word with its leading space, a run of punctuation with its leading space, or other whitespace:
# concatenating the pieces gives the text back, so decoding is exact for words seen in training.
WORD_PIECES = re.compile(r" ?\w+| ?[^\w\s]+|\s+")


class WordVocabulary:
    """The train split's words (with their leading space) and punctuation runs, most frequent first;
    id 0 is `<unk>`, which stands for every piece outside the vocabulary."""

    kind = "word"
    UNKNOWN = "<unk>"

    def __init__(self, words: list[str]) -> None:
        self.words = [self.UNKNOWN] + [word for word in words if word != self.UNKNOWN]
        self.index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def from_text(cls, text: str, vocab_size: int | None) -> WordVocabulary:
        counts = Counter(WORD_PIECES.findall(text))
        # Ties are broken by the piece itself, so the vocabulary does not depend on dict order.
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        return cls(ranked if vocab_size is None else ranked[: vocab_size - 1])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_with_character_counts(text)[0]

    def encode_with_character_counts(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        pieces = WORD_PIECES.findall(text)
        ids = [self.index.get(piece, 0) for piece in pieces]
        return torch.tensor(ids, dtype=torch.long), torch.tensor([len(piece) for piece in pieces], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.words[int(i)] for i in ids)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"kind": self.kind, "words": self.words}))


class BPEVocabulary:
    """Byte-level BPE of the `tokenizers` library: every text encodes (no unknown tokens) and
    decodes back exactly; merges are learnt from the train split."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_text(cls, text: str, vocab_size: int) -> BPEVocabulary:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet):
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than the {len(alphabet)} byte tokens BPE starts "
                f"from; use at least {len(alphabet)}."
            )
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
        tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
        return cls(tokenizer)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.long)

    def encode_with_character_counts(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        encoding = self.tokenizer.encode(text)
        # A character of several bytes can span tokens, which then share its offsets; counting each
        # token's new end offset credits the character once, and the counts sum to len(text).
        ends = torch.tensor([0] + [end for _, end in encoding.offsets], dtype=torch.long)
        return torch.tensor(encoding.ids, dtype=torch.long), ends.cummax(0).values.diff()

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def save(self, path: Path) -> None:
        self.tokenizer.save(str(path))


Vocabulary = CharVocabulary | WordVocabulary | BPEVocabulary


def train_tokenizer(kind: str, train_text: str, full_text: str, vocab_size: int | None) -> Vocabulary:
    """The `kind` tokenizer for a corpus. Word and BPE vocabularies are learnt from `train_text`
    only, so nothing of the val/test text leaks into them; the character vocabulary is every
    character of `full_text` (a character alphabet carries no statistics of the held-out text)."""
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer={kind!r} is not allowed; choose one of: {', '.join(TOKENIZERS)}.")
    if vocab_size is not None and vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size} must be >= 2 (or null).")
    if kind == "char":
        if vocab_size is not None:
            raise ValueError(
                f"vocab_size={vocab_size} is for word and bpe tokens; the char vocabulary is every "
                "character of the text, so leave vocab_size null."
            )
        return CharVocabulary(full_text)
    if kind == "word":
        return WordVocabulary.from_text(train_text, vocab_size)
    return BPEVocabulary.from_text(train_text, vocab_size or DEFAULT_BPE_VOCAB_SIZE)


def load_tokenizer(path: str | Path) -> Vocabulary:
    """A tokenizer saved by `save`; an unreadable file fails in one sentence naming it."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"tokenizer_file={path} is not a readable tokenizer file ({type(error).__name__}); "
            "pass the tokenizer.json of a data=text run."
        ) from error
    if content.get("kind") == "char":
        return CharVocabulary(content["characters"])
    if content.get("kind") == "word":
        return WordVocabulary(content["words"])
    if content.get("model", {}).get("type") == "BPE":
        from tokenizers import Tokenizer

        return BPEVocabulary(Tokenizer.from_str(json.dumps(content)))
    raise ValueError(
        f"tokenizer_file={path} holds no char, word or BPE tokenizer; pass the tokenizer.json of a data=text run."
    )
