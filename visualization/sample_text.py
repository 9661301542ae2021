"""Sampling text from a trained language model (char, word or BPE tokens).

    python -m visualization.sample_text --experiment logs/train/runs/<run> --length 300 --temperature 0.8 --prompt "The "

The run is rebuilt from its directory (saved config, evaluated checkpoint and the tokenizer.json it
saved), so the sample uses exactly the tokens the model was trained on.
"""

from __future__ import annotations

import argparse

import torch

from models.generation import sample_tokens
from visualization.run_arguments import add_run_arguments, load_chosen_run


def main(argv: list[str] | None = None) -> str:
    """Print (and return) text sampled from the model of a finished `data=text` run; `--length` counts tokens."""
    parser = argparse.ArgumentParser(description="Sample text from a trained language model (data=text).")
    add_run_arguments(parser)
    parser.add_argument("--length", type=int, default=300, help="tokens to generate (default 300)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="softmax temperature; lower is more conservative, 0 is greedy (default 0.8)",
    )
    parser.add_argument("--prompt", default=None, help="text to continue (default: the first token of the corpus)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling RNG (default 0)")
    args = parser.parse_args(argv)
    run = load_chosen_run(parser, args)
    vocabulary = getattr(run.datamodule, "vocabulary", None)
    if vocabulary is None:
        parser.error(
            f"--experiment {args.experiment} was not trained on text (data=text); there is no vocabulary to sample."
        )
    try:
        prompt = vocabulary.encode(args.prompt) if args.prompt is not None else run.datamodule.ids[:1]
        generated = sample_tokens(
            run.module.model, prompt, args.length, args.temperature, torch.Generator().manual_seed(args.seed)
        )
    except ValueError as error:
        parser.error(str(error))
    text = vocabulary.decode(prompt) + vocabulary.decode(generated)
    print(text)
    return text


if __name__ == "__main__":
    main()
