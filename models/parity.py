"""Z2 parity algebra shared by every Z2 model: the split of a hidden state into even and odd
channels, and the parity energy that tells how much of the state flips sign under x -> -x."""

from __future__ import annotations

import math

import torch

K_STAR = 1.0 / (2.0 * math.log(2.0))
"""Reference threshold for the parity energy, 1 / (2 ln 2) = 0.7213; drawn on every parity plot."""


def parity_energy(h_even: torch.Tensor, h_odd: torch.Tensor) -> torch.Tensor:
    """alpha_minus(h) = ||h_odd||^2 / (||h||^2 + 1e-8): invariant under x -> -x and in [0, 1]."""
    odd = h_odd.pow(2).sum(-1)
    return odd / (odd + h_even.pow(2).sum(-1) + 1e-8)


def split_hidden_dim(hidden_dim: int, model_name: str) -> tuple[int, int]:
    """(even, odd) channel counts for a Z2 model; both halves must be non-empty and equal."""
    if hidden_dim < 2 or hidden_dim % 2:
        raise ValueError(
            f"hidden_dim={hidden_dim} is not allowed for {model_name}: it must be an even integer >= 2 "
            "because the state splits into equal even and odd halves."
        )
    return hidden_dim // 2, hidden_dim // 2
