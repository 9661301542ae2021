"""Train-step time of every registered model that reads vectors, against the raw torch.nn.LSTM(4, 64).

    python benchmarks/bench_models.py            # CPU, 2 threads, T in {100, 1000}
    python benchmarks/bench_models.py --T 100 --repeats 5

One training step (forward, MSE on every step, backward, AdamW) of each registered model at B=32,
hidden 64, input 4, next to the raw `torch.nn.LSTM(4, 64)` baseline (on CPU z2_seam and z2_delta
also with their fused kernels switched off, as SEAM_SEAM_KERNEL=eager and SEAM_DELTA_KERNEL=eager
do: their time before the kernels), measured side by side in one process, round-robin, and
reported as medians and ratios. The framework's overhead around a step is
benchmarks/bench_overhead.py.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from benchmarks.cli import positive_int, trained_vector_models
from benchmarks.timing import interleaved_median_seconds, train_step
from models import build_model, delta_cpu_kernel, get_model_class, seam_cpu_kernel

INPUT_DIM, HIDDEN_DIM, BATCH = 4, 64, 32


class RawLSTM(nn.Module):
    """The named baseline: torch.nn.LSTM(4, 64) with a linear head, no project code."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(INPUT_DIM, HIDDEN_DIM, batch_first=True)
        self.head = nn.Linear(HIDDEN_DIM, INPUT_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def timed_step(model: nn.Module, steps: int, device: torch.device, switch=nullcontext) -> Callable[[], None]:
    """One full training step on (BATCH, steps, INPUT_DIM) data, run inside `switch()`."""
    x = torch.randn(BATCH, steps, INPUT_DIM)
    y = torch.randn(BATCH, steps, INPUT_DIM)
    step = train_step(model, x, y, nn.functional.mse_loss, device)

    def switched() -> None:
        with switch():
            step()

    return switched


def width_options(name: str, steps: int) -> dict[str, int]:
    """Width HIDDEN_DIM for every model: recurrent models call it hidden_dim, transformers d_model
    (and they need a learnable position for each of the `steps` and of their latent tokens)."""
    parameters = inspect.signature(get_model_class(name)).parameters
    if "hidden_dim" in parameters:
        return {"hidden_dim": HIDDEN_DIM}
    latent = parameters["num_latent_tokens"].default if "num_latent_tokens" in parameters else 0
    return {"d_model": HIDDEN_DIM, "max_length": steps + latent}


LSTM = "torch.nn.LSTM(4, 64)"  # the named baseline every ratio is taken against
COMPILED_DELTA = "z2_delta (compile=true)"
EAGER_SEAM = "z2_seam (SEAM_SEAM_KERNEL=eager)"
EAGER_DELTA = "z2_delta (SEAM_DELTA_KERNEL=eager)"
# The rows that time a model with its fused CPU kernels switched off (their time before the
# kernels), the model they time and the kernel module switched off.
KERNELS_OFF = {EAGER_SEAM: ("z2_seam", seam_cpu_kernel), EAGER_DELTA: ("z2_delta", delta_cpu_kernel)}


def kernel_switched_off(kernel_module):
    """A context in which the model runs without the fused CPU kernel of `kernel_module` (as with its
    environment switch set to eager); the loaded kernel stays loaded for the other rows."""

    @contextmanager
    def switched_off():
        fused = kernel_module.kernel
        kernel_module.kernel = lambda: None
        try:
            yield
        finally:
            kernel_module.kernel = fused

    return switched_off


def compiled_forward(model: nn.Module) -> nn.Module:
    """The model with its forward compiled as train_hydra.py does for compile=true."""
    model.forward = torch.compile(model.forward)
    return model


def step_time_table(
    lengths: list[int], repeats: int, device: torch.device, only: list[str] | None = None
) -> dict[tuple[str, int], float]:
    candidates = {LSTM: lambda steps: RawLSTM()}
    for name in (m for m in trained_vector_models() if not only or m in only):
        candidates[name] = lambda steps, name=name: build_model(
            name, input_dim=INPUT_DIM, output_dim=INPUT_DIM, **width_options(name, steps)
        )
    if "z2_delta" in candidates:
        # compile=true of train_hydra.py: torch.compile of the model's forward (the scan breaks the
        # graph; the gate and feature math around it is fused by inductor). The warm-up step compiles.
        candidates[COMPILED_DELTA] = lambda steps: compiled_forward(candidates["z2_delta"](steps))
    if device.type == "cpu":
        for row, (model_name, _) in KERNELS_OFF.items():
            if model_name in candidates:
                candidates[row] = candidates[model_name]
    results = {}
    for steps in lengths:
        timed = {}
        for name, make in candidates.items():
            torch.manual_seed(0)
            switch = kernel_switched_off(KERNELS_OFF[name][1]) if name in KERNELS_OFF else nullcontext
            timed[name] = timed_step(make(steps), steps, device, switch)
        # The per-step Python loop of z2_seam takes about a second per step at T=1000.
        counts = {name: max(3, repeats // 3) if name == EAGER_SEAM and steps >= 1000 else repeats for name in timed}
        for name, seconds in interleaved_median_seconds(timed, counts, device).items():
            results[(name, steps)] = 1e3 * seconds
    return results


def print_step_table(results: dict[tuple[str, int], float], lengths: list[int]) -> None:
    names = list(dict.fromkeys(name for name, _ in results))
    print(
        f"\n## Train-step time, B={BATCH}, hidden {HIDDEN_DIM}, fwd+bwd+AdamW (median ms; ratio = time / {LSTM} time)\n"
    )
    print("| model | " + " | ".join(f"T={t} ms | ratio" for t in lengths) + " |")
    print("|---|" + "---|---|" * len(lengths))
    for name in names:
        cells = [f"{results[(name, t)]:.2f} | {results[(name, t)] / results[(LSTM, t)]:.2f}x" for t in lengths]
        print(f"| {name} | " + " | ".join(cells) + " |")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    print()
    for steps, target in ((1000, 3.0), (100, 1.0)):
        if steps in lengths and "z2_delta" in names:
            speedup = results[(LSTM, steps)] / results[("z2_delta", steps)]
            print(
                f"z2_delta vs {LSTM} train step, T={steps}: {speedup:.2f}x faster (target >= {target:g}x) "
                f"{verdict(speedup >= target)}"
            )
    if COMPILED_DELTA in names:
        for steps in lengths:
            gain = results[("z2_delta", steps)] / results[(COMPILED_DELTA, steps)]
            print(f"{COMPILED_DELTA} vs eager z2_delta, T={steps}: {gain:.2f}x faster (print only)")
    for row, (model_name, _) in KERNELS_OFF.items():
        if row in names:
            for steps in lengths:
                gain = results[(row, steps)] / results[(model_name, steps)]
                print(f"{model_name} fused CPU kernels vs {row}, T={steps}: {gain:.2f}x faster (print only)")
    if 1000 in lengths and "z2_seam" in names:
        slowdown = results[("z2_seam", 1000)] / results[(LSTM, 1000)]
        print(f"z2_seam vs {LSTM} train step, T=1000: {slowdown:.2f}x its time (target <= 3x) {verdict(slowdown <= 3)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=positive_int, nargs="+", default=[100, 1000], help="sequence lengths")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed steps per model and length")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=trained_vector_models(),
        default=None,
        help="registered models to time next to the LSTM (default: all that read vectors; "
        "z2_delta and z2_seam are needed for the target lines)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"\n# {device.type}: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32")
        print_step_table(step_time_table(args.T, args.repeats, device, args.models), args.T)


if __name__ == "__main__":
    main()
