"""Training throughput (tokens/s and characters/s) on text across batch sizes.

    python benchmarks/bench_text.py                                # CPU, char tokens, batch 256 .. 8192
    python benchmarks/bench_text.py --batch-sizes 256 1024 --steps 3
    python benchmarks/bench_text.py --tokenizer bpe --vocab-size 512   # also: word
    python benchmarks/bench_text.py --device cuda                  # where a GPU is available

One training step is forward, cross-entropy on every step, backward and AdamW, on real batches of
25 tokens from the generated corpus (data/text.py). Characters/s counts the characters the batch's
target tokens cover, so char, word and BPE runs compare on one scale. Models, side by side in one
process:
- `torch.nn.LSTM`: the named baseline, torch's fused 2-layer LSTM with an embedding and a head;
- `lstm`, `gru`: the registry's 2-layer models with LayerNorm (embedding 192, hidden 384), which
  run the per-step cell path;
- `z2_delta`: 2 layers, hidden 384 (a 192-wide odd stream, which the embedding feeds).
The first table gives tokens/s per batch size, the ratio to `torch.nn.LSTM` at the same size, and
each model's best batch size; the second gives characters/s. A size that does not fit in memory is reported as such, not crashed on.
"""

from __future__ import annotations

import argparse
import resource

import psutil
import torch
from torch import nn

from benchmarks.cli import positive_int
from benchmarks.timing import median_train_step_seconds
from data.text import TextDataModule
from data.tokenization import TOKENIZERS
from models import build_model

SEQUENCE_LENGTH, EMBEDDING_DIM, HIDDEN_DIM, LAYERS = 25, 192, 384, 2
BATCH_SIZES = [256, 512, 1024, 2048, 4096, 8192]
BASELINE = "torch.nn.LSTM"


class TorchLSTM(nn.Module):
    """The named baseline: embedding, torch.nn.LSTM (fused kernel) and a linear head, no project code."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, EMBEDDING_DIM)
        self.lstm = nn.LSTM(EMBEDDING_DIM, HIDDEN_DIM, LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN_DIM, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embedding(ids))[0])


def candidates(vocab_size: int) -> dict[str, callable]:
    recurrent = dict(
        vocab_size=vocab_size,
        output_dim=vocab_size,
        hidden_dim=HIDDEN_DIM,
        num_layers=LAYERS,
        embedding_dim=EMBEDDING_DIM,
        use_layer_norm=True,
    )
    return {
        BASELINE: lambda: TorchLSTM(vocab_size),
        "lstm (LayerNorm)": lambda: build_model("lstm", **recurrent),
        "gru (LayerNorm)": lambda: build_model("gru", **recurrent),
        "z2_delta": lambda: build_model(
            "z2_delta", vocab_size=vocab_size, output_dim=vocab_size, hidden_dim=HIDDEN_DIM, num_layers=LAYERS
        ),
    }


def next_token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def is_out_of_memory(error: RuntimeError) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def cap_cpu_memory(fraction: float = 0.8) -> None:
    """Make a CPU allocation beyond `fraction` of free RAM raise instead of waking the OOM killer."""
    process = psutil.Process()
    limit = process.memory_info().vms + int(fraction * psutil.virtual_memory().available)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def throughput_table(
    batch_sizes: list[int], steps: int, device: torch.device, tokenizer: str, vocab_size: int | None
) -> tuple[dict[str, dict[int, float | None]], dict[int, float]]:
    """Tokens/s of every model at every batch size (None: out of memory), and the characters per
    token of each batch size's timed batch (characters/s = tokens/s * that)."""
    # Enough text for the largest batch of 25-token windows in the train split, at up to 8 characters
    # per token, and for one window in the (smaller) val and test splits.
    characters = (max(batch_sizes) + 1) * 32 * (8 if tokenizer != "char" else 1)
    datamodule = TextDataModule(
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        sequence_length=SEQUENCE_LENGTH,
        corpus_characters=max(characters, 20_000),
        seed=0,
    )
    train = datamodule.datasets["train"]
    results: dict[str, dict[int, float | None]] = {}
    characters_per_token: dict[int, float] = {}
    for name, make in candidates(datamodule.vocab_size).items():
        results[name] = {}
        for batch_size in batch_sizes:
            batch = {key: torch.stack([train[i][key] for i in range(batch_size)]) for key in ("x", "y", "characters")}
            characters_per_token[batch_size] = batch["characters"].float().mean().item()
            torch.manual_seed(0)
            try:
                seconds = median_train_step_seconds(make(), batch["x"], batch["y"], next_token_loss, steps, device)
                results[name][batch_size] = batch["y"].numel() / seconds
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                results[name][batch_size] = None
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            shown = results[name][batch_size]
            print(
                f"  {name:18s} batch {batch_size:5d}: "
                + (
                    f"{shown:10.0f} tokens/s, {shown * characters_per_token[batch_size]:10.0f} characters/s"
                    if shown
                    else "out of memory"
                ),
                flush=True,
            )
    return results, characters_per_token


def markdown(
    results: dict[str, dict[int, float | None]], batch_sizes: list[int], scale: dict[int, float] | None = None
) -> str:
    """The table of `results` (times `scale` per batch size, where given), with ratios to BASELINE."""
    scale = scale or {}
    header = "| model | " + " | ".join(f"B={b}" for b in batch_sizes) + " | best batch size |"
    lines = [header, "|" + "---|" * (len(batch_sizes) + 2)]
    for name, row in results.items():
        cells = []
        for batch_size in batch_sizes:
            value, baseline = row[batch_size], results[BASELINE][batch_size]
            if value is None:
                cells.append("out of memory")
            elif name == BASELINE or baseline is None:
                cells.append(f"{value * scale.get(batch_size, 1.0):,.0f}")
            else:
                cells.append(f"{value * scale.get(batch_size, 1.0):,.0f} ({value / baseline:.2f}x)")
        measured = {b: v for b, v in row.items() if v is not None}
        best = f"{max(measured, key=measured.get)}" if measured else "none fits"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=BATCH_SIZES)
    parser.add_argument("--steps", type=positive_int, default=2, help="timed steps per batch size (median; default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="char", help="data.tokenizer (default char)")
    parser.add_argument("--vocab-size", type=positive_int, default=None, help="data.vocab_size for word and bpe")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here.")
    if device.type == "cpu":
        cap_cpu_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"Training throughput, {SEQUENCE_LENGTH} {args.tokenizer} tokens per sample, on {name}; "
        f"ratio to {BASELINE} in brackets."
    )
    results, characters_per_token = throughput_table(
        args.batch_sizes, args.steps, device, args.tokenizer, args.vocab_size
    )
    table = (
        f"tokens/s:\n\n{markdown(results, args.batch_sizes)}\n\ncharacters/s "
        f"({', '.join(f'B={b}: {c:.2f}' for b, c in characters_per_token.items())} characters per token):\n\n"
        f"{markdown(results, args.batch_sizes, characters_per_token)}"
    )
    print(table)
    return table


if __name__ == "__main__":
    main()
