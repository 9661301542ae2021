"""How a model reads its input: vectors of `input_dim` floats, or token ids below `vocab_size`."""

from __future__ import annotations

from torch import nn


def check_input_sizes(input_dim: int | None, vocab_size: int | None) -> None:
    """Exactly one of the two sizes, and a positive one (the DataModule declares which)."""
    if (input_dim is None) == (vocab_size is None):
        raise ValueError("input_dim or vocab_size must be given, and not both.")
    for name, value in (("input_dim", input_dim), ("vocab_size", vocab_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be >= 1.")


def input_layer(input_dim: int | None, vocab_size: int | None, width: int) -> nn.Module:
    """A bias-free linear map of vectors (bias-free keeps x -> -x equivariance), or an embedding of ids."""
    check_input_sizes(input_dim, vocab_size)
    return nn.Linear(input_dim, width, bias=False) if vocab_size is None else nn.Embedding(vocab_size, width)
