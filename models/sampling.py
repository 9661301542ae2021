"""Sampling text from a trained language model (char, word or BPE tokens).

    python -m models.sampling --experiment logs/train/runs/<run> --length 300 --temperature 0.8 --prompt "The "

The run is rebuilt from its directory (saved config, evaluated checkpoint and the tokenizer.json it
saved), so the sample uses exactly the tokens the model was trained on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn


@torch.no_grad()
def sample_tokens(model: nn.Module, prompt: torch.Tensor, length: int, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
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
    return sequence[len(prompt):]


def main(argv: list[str] | None = None) -> str:
    """Print (and return) text sampled from the model of a finished `data=text` run; `--length` counts tokens."""
    from train_hydra import ConfigError, load_run

    parser = argparse.ArgumentParser(description="Sample text from a trained language model (data=text).")
    parser.add_argument("--experiment", type=Path, required=True, help="run directory of a data=text run")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint to load (default: the one metrics.json evaluated, else checkpoints/last.ckpt)")
    parser.add_argument("--length", type=int, default=300, help="tokens to generate (default 300)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="softmax temperature; lower is more conservative, 0 is greedy (default 0.8)")
    parser.add_argument("--prompt", default=None, help="text to continue (default: the first token of the corpus)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling RNG (default 0)")
    args = parser.parse_args(argv)
    try:
        run = load_run(args.experiment, args.checkpoint)
    except ConfigError as error:
        parser.error(str(error))
    vocabulary = getattr(run.datamodule, "vocabulary", None)
    if vocabulary is None:
        parser.error(f"--experiment {args.experiment} was not trained on text (data=text); there is no vocabulary to sample.")
    try:
        prompt = vocabulary.encode(args.prompt) if args.prompt is not None else run.datamodule.ids[:1]
        generated = sample_tokens(run.module.model, prompt, args.length, args.temperature,
                                  torch.Generator().manual_seed(args.seed))
    except ValueError as error:
        parser.error(str(error))
    text = vocabulary.decode(prompt) + vocabulary.decode(generated)
    print(text)
    return text


if __name__ == "__main__":
    main()
