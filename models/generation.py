"""Generating token ids from a causal token model, one sampled id at a time.

The command line that samples text from a finished run is visualization/sample_text.py.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    prompt: torch.Tensor,
    length: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend the ids `prompt` (1-D, non-empty) by `length` ids drawn one at a time from the causal
    token model's next-id distribution at `temperature`; 0 picks the most likely id (greedy).

    The model is re-run over the whole sequence for every new id, so this works for any causal
    token model, recurrent or not.
    """
    if prompt.dim() != 1 or len(prompt) == 0:
        raise ValueError("prompt must be a non-empty 1-D tensor of token ids.")
    if length < 1:
        raise ValueError(f"length={length} must be >= 1.")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy).")
    sequence = prompt.clone()
    for _ in range(length):
        logits = model(sequence.unsqueeze(0))[0, -1].float()
        if temperature == 0:
            next_id = logits.argmax()
        else:
            next_id = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)[0]
        sequence = torch.cat([sequence, next_id.reshape(1)])
    return sequence[len(prompt) :]
