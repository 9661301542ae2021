"""Multi-digit multiplication as a seq2seq task (`data=multiplication`), for the transformers.

A problem a x b is written with the digits of every number reversed (least significant first, the
order in which long multiplication produces them) and the product zero-padded to len(a) + len(b)
digits, so the answer length follows from the prompt:

    12 x 34 = 408   ->   prompt "21*43="   answer "8040"   (0408 reversed)

The sequence is prompt + answer; a batch holds x = sequence[:-1] and y = sequence[1:] (teacher
forcing), with IGNORE_INDEX on every target that is still part of the prompt, so only answer tokens
are scored. Rows are padded with the padding token (x) and IGNORE_INDEX (y).

Operand pairs are split into train/val/test with no pair in two splits. trainer.test evaluates the
test pairs together with a held-out set whose operands are longer than any seen in training; rows
of that set carry longer=True and the seq2seq objective reports them as test/*_longer (length
generalisation), the test pairs as test/*.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from data.datamodule import IGNORE_INDEX, SplitDataModule, checked_split

MAX_OPERAND_DIGITS = 18  # operands are drawn as int64, which holds every 18-digit number
SPLITS = ("train", "val", "test")


class MultiplicationTokenizer:
    """Characters of the task and their ids: the digits (id = digit), `*`, `=` and `_` (padding)."""

    characters = "0123456789*=_"
    times, separator, padding = "*", "=", "_"

    def __init__(self) -> None:
        self.index = {character: i for i, character in enumerate(self.characters)}
        self.separator_id = self.index[self.separator]
        self.padding_id = self.index[self.padding]

    def __len__(self) -> int:
        return len(self.characters)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters {''.join(unknown)!r} are not in the vocabulary {self.characters!r}.")
        return [self.index[character] for character in text]

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.characters[int(i)] for i in ids)

    def problem(self, a: int, b: int) -> tuple[str, str]:
        """The prompt and answer texts of a x b: reversed digits, answer padded to len(a) + len(b) digits."""
        width = len(str(a)) + len(str(b))
        return f"{str(a)[::-1]}{self.times}{str(b)[::-1]}{self.separator}", str(a * b).zfill(width)[::-1]

    def decode_number(self, answer_ids: torch.Tensor | list[int]) -> int | None:
        """The number an answer spells (digits least significant first), or None unless every token
        is a digit: a decoded answer is well-formed exactly when this returns a number."""
        text = self.decode(answer_ids)
        return int(text[::-1]) if text and text.isdigit() else None


def numbers_with_digits(digits: int) -> tuple[int, int]:
    """[low, high) of the numbers written with `digits` digits (0 is a 1-digit number)."""
    return (0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def sample_operand_pairs(
    count: int, min_digits: int, max_digits: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """`count` distinct pairs (a, b), each operand with a digit count drawn uniformly from
    min_digits..max_digits and then a number drawn uniformly among those with that many digits;
    every pair, shuffled, when there are no more than `count`."""
    ranges = [numbers_with_digits(d) for d in range(min_digits, max_digits + 1)]
    numbers = sum(high - low for low, high in ranges)
    if numbers**2 <= count:
        every_number = np.concatenate([np.arange(low, high) for low, high in ranges])
        a, b = np.meshgrid(every_number, every_number, indexing="ij")
        order = rng.permutation(a.size)
        return list(zip(a.ravel()[order].tolist(), b.ravel()[order].tolist()))
    lows, highs = np.array(ranges, dtype=np.int64).T
    chosen: dict[tuple[int, int], None] = {}  # an insertion-ordered set: the draw order is the shuffle
    while len(chosen) < count:
        draws = max(2 * (count - len(chosen)), 1024)
        digits_a, digits_b = rng.integers(0, len(ranges), size=(2, draws))
        a = rng.integers(lows[digits_a], highs[digits_a])
        b = rng.integers(lows[digits_b], highs[digits_b])
        for pair in zip(a.tolist(), b.tolist()):
            chosen[pair] = None
            if len(chosen) == count:
                break
    return list(chosen)


class MultiplicationProblems(Dataset):
    """Encoded problems, padded to the longest: x, y (IGNORE_INDEX on prompt targets and padding),
    `longer` (operands longer than the training range) and `operands` (a, b)."""

    def __init__(self, pairs: list[tuple[int, int]], longer: list[bool], tokenizer: MultiplicationTokenizer) -> None:
        problems = [tokenizer.problem(a, b) for a, b in pairs]
        length = max(len(prompt) + len(answer) for prompt, answer in problems) - 1
        self.x = torch.full((len(pairs), length), tokenizer.padding_id, dtype=torch.long)
        self.y = torch.full((len(pairs), length), IGNORE_INDEX, dtype=torch.long)
        for row, (prompt, answer) in enumerate(problems):
            sequence = torch.tensor(tokenizer.encode(prompt + answer))
            self.x[row, : len(sequence) - 1] = sequence[:-1]
            # y[t] is the token after x[t]; the first answer token follows the last prompt token.
            self.y[row, len(prompt) - 1 : len(sequence) - 1] = sequence[len(prompt) :]
        self.longer = torch.tensor(longer, dtype=torch.bool)
        self.operands = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index], "longer": self.longer[index], "operands": self.operands[index]}


class MultiplicationDataModule(SplitDataModule):
    """Seeded a x b problems with min_digits..max_digits digits per operand, as reversed-digit
    token sequences (see the module docstring for the layout and how trainer.test uses the
    longer-operand set).

    Declares task `seq2seq`, `vocab_size` = `output_dim` (the tokenizer's size), `separator_token`
    (the `=` that ends every prompt; the latent transformer puts its latent tokens before it) and
    `max_sequence_length` (the longest x of any split).

    Args:
        min_digits, max_digits: digits per operand in train/val/test.
        longer_digits: digits of both operands in the longer-operand test set (null: max_digits + 1).
        num_pairs: distinct operand pairs split into train/val/test (all pairs if there are fewer).
        num_longer: problems in the longer-operand test set (all pairs if there are fewer).
        split: train/val/test fractions of the pairs.
        batch_size, num_workers: DataLoader settings.
        seed: draws the pairs and the training order.
    """

    task = "seq2seq"

    def __init__(
        self,
        min_digits: int = 1,
        max_digits: int = 2,
        longer_digits: int | None = None,
        num_pairs: int = 20000,
        num_longer: int = 1000,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        longer_digits = max_digits + 1 if longer_digits is None else longer_digits
        if not 1 <= min_digits <= MAX_OPERAND_DIGITS:
            raise ValueError(f"min_digits={min_digits} is not allowed; it must lie in [1, {MAX_OPERAND_DIGITS}].")
        if not min_digits <= max_digits < MAX_OPERAND_DIGITS:
            raise ValueError(
                f"max_digits={max_digits} is not allowed; it must lie in [min_digits={min_digits}, "
                f"{MAX_OPERAND_DIGITS - 1}] (the longer-operand test set needs one digit more)."
            )
        if not max_digits < longer_digits <= MAX_OPERAND_DIGITS:
            raise ValueError(
                f"longer_digits={longer_digits} is not allowed; it must lie in "
                f"[max_digits + 1 = {max_digits + 1}, {MAX_OPERAND_DIGITS}]."
            )
        for name, value in (("num_pairs", num_pairs), ("num_longer", num_longer)):
            if value < 1:
                raise ValueError(f"{name}={value} is not allowed; it must be a positive integer.")
        split = checked_split(split, batch_size, num_workers)
        numbers = sum(high - low for low, high in map(numbers_with_digits, range(min_digits, max_digits + 1)))
        self.split_sizes = self._split_sizes(min(num_pairs, numbers**2), split)
        if min(self.split_sizes.values()) == 0:
            raise ValueError(
                f"num_pairs={num_pairs} leaves a split empty ({min(num_pairs, numbers**2)} pairs of "
                f"{min_digits}..{max_digits}-digit operands split {list(split)}); "
                "raise num_pairs or the digits."
            )
        self.tokenizer = MultiplicationTokenizer()
        self.min_digits, self.max_digits, self.longer_digits = min_digits, max_digits, longer_digits
        self.num_longer = num_longer
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.vocab_size = self.output_dim = len(self.tokenizer)
        self.separator_token = self.tokenizer.separator_id
        # x = prompt + answer - 1 token = (a + 1 + b + 1) + (a + b) - 1 for a- and b-digit operands.
        self.max_sequence_length = 4 * longer_digits + 1
        self.save_hyperparameters(
            {
                "min_digits": min_digits,
                "max_digits": max_digits,
                "longer_digits": longer_digits,
                "num_pairs": num_pairs,
                "num_longer": num_longer,
                "split": list(split),
                "batch_size": batch_size,
                "seed": seed,
            }
        )
        self.pairs: dict[str, list[tuple[int, int]]] = {}
        self.datasets: dict[str, MultiplicationProblems] = {}

    @staticmethod
    def _split_sizes(total: int, split: tuple[float, float, float]) -> dict[str, int]:
        train, val = round(split[0] * total), round(split[1] * total)
        return {"train": train, "val": val, "test": total - train - val}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        rng = np.random.default_rng(self.seed)
        pool = sample_operand_pairs(sum(self.split_sizes.values()), self.min_digits, self.max_digits, rng)
        start = 0
        for name in SPLITS:
            self.pairs[name] = pool[start : start + self.split_sizes[name]]
            start += self.split_sizes[name]
        self.pairs["longer"] = sample_operand_pairs(self.num_longer, self.longer_digits, self.longer_digits, rng)
        for name in ("train", "val"):
            self.datasets[name] = MultiplicationProblems(
                self.pairs[name], [False] * len(self.pairs[name]), self.tokenizer
            )
        test, longer = self.pairs["test"], self.pairs["longer"]
        self.datasets["test"] = MultiplicationProblems(
            test + longer, [False] * len(test) + [True] * len(longer), self.tokenizer
        )
