"""Greedy decoding of seq2seq answers and scheduled sampling, for models that map token ids
(B, T) to next-token logits (B, T, V)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from data.datamodule import IGNORE_INDEX

TokenModel = Callable[[torch.Tensor], torch.Tensor]  # ids (B, T) -> logits (B, T, V)
SAMPLING_SCHEDULES = ("none", "linear", "cosine", "step")


@torch.no_grad()
def greedy_decode(model: TokenModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every row's answer generated token by token from its prompt, each step feeding the model's
    own argmax back in: (B, T) with the chosen token at the scored positions of y and IGNORE_INDEX
    elsewhere.

    Rows are laid out for teacher forcing (x[t+1] = y[t]) with the answer at the contiguous scored
    positions of y, so the prompt is x up to the first scored position. A causal model's output at
    t never depends on inputs after t, so decoding overwrites the answer slots of x in place and
    the teacher-forced answer tokens there are never seen.
    """
    scored = y != IGNORE_INDEX
    first = scored.int().argmax(dim=1)
    answer_length = scored.sum(dim=1)
    generated, decoded = x.clone(), torch.full_like(y, IGNORE_INDEX)
    rows = torch.arange(len(x), device=x.device)
    for step in range(int(answer_length.max()) if len(x) else 0):
        active = step < answer_length
        position = (first + step).clamp(max=x.shape[1] - 1)
        choice = model(generated)[rows, position].argmax(dim=-1)
        decoded[rows[active], position[active]] = choice[active]
        feed = active & (position + 1 < x.shape[1])
        generated[rows[feed], position[feed] + 1] = choice[feed]
    return decoded


def scheduled_sampling_rate(schedule: str, progress: float, start: float, max_rate: float) -> float:
    """Share of answer tokens fed from the model's own predictions at training `progress` in [0, 1]:
    0 until `start`, then rising to `max_rate` at the end of training, linearly, along a half
    cosine, or (`step`) at once."""
    if schedule == "none" or progress < start:
        return 0.0
    ramp = min(1.0, (progress - start) / (1.0 - start))
    if schedule == "linear":
        return max_rate * ramp
    if schedule == "cosine":
        return max_rate * 0.5 * (1.0 - math.cos(math.pi * ramp))
    return max_rate


@torch.no_grad()
def mix_in_predictions(model: TokenModel, x: torch.Tensor, y: torch.Tensor, rate: float) -> torch.Tensor:
    """x with each answer token replaced, with probability `rate`, by the model's prediction of it."""
    predicted = model(x).argmax(dim=-1)
    scored = y != IGNORE_INDEX
    # x[t] is an answer token exactly when the targets at t - 1 and t are both answer tokens.
    answer_inputs = scored[:, :-1] & scored[:, 1:]
    replace = answer_inputs & (torch.rand(answer_inputs.shape, device=scored.device) < rate)
    mixed = x.clone()
    mixed[:, 1:] = torch.where(replace, predicted[:, :-1], x[:, 1:])
    return mixed
