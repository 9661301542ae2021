"""Benchmark linear_scan against a per-step autograd loop, nn.LSTM and nn.GRU (forward + backward), and
its achieved memory bandwidth against a plain tensor copy of the same size, timed in the same run.

Run from the repository root, either way:
    python benchmarks/bench_scan.py [--T 100 1000 10000] [--repeats 20] [--threads 2]
    python benchmarks/bench_scan.py --batch 256 --hidden 1024 --T 1000 --loop-max-T 100   # enough programs to fill a GPU
    python -m benchmarks.bench_scan

All ops run fp32 at B=32, H=64 unless --batch and --hidden say otherwise; the scans backpropagate a
fixed upstream gradient, the RNNs output.sum(). Times are medians of time.perf_counter over the timed runs after warm-up; all ops of
one T run in the same process, interleaved run by run. Runs on Linux and macOS (peak memory is
measured from /proc where there is one, and reported as n/a elsewhere).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.cli import non_negative_int, positive_float, positive_int
from benchmarks.timing import synchronize
from models.scan import EagerScan, linear_scan, select_backend

RNN_INPUT = 4
OPS = ("linear_scan", "per-step loop", "nn.LSTM", "nn.GRU", "tensor copy")
# fwd reads a, b and writes h; bwd reads a, h and the upstream gradient and writes grad_a, grad_b.
SCAN_TENSORS_MOVED = 8
COPY_TENSORS_MOVED = 2  # dst.copy_(src) reads one (B, T, H) tensor and writes one
# The bandwidth target (README) is set at this length. At the default B and H a T=100 tensor
# (0.8 MB) stays in a CPU's caches, so there the copy measures cache speed, not memory's.
BANDWIDTH_TARGET_T = 1000
MEMORY_NOTE = {
    "cpu": "peak MiB: growth of resident memory (VmHWM minus VmRSS before) during one fwd+bwd, "
    "in a fresh subprocess after one warm-up run and malloc_trim; counts outputs, saved tensors and grads.",
    "cuda": "peak MiB: torch.cuda.max_memory_allocated during one fwd+bwd minus memory allocated before it.",
}


def make_case(
    op: str, shape: tuple[int, int, int], device: torch.device
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Build inputs of shape (B, T, H) for one op and return (step, clear): step runs one fwd+bwd,
    clear drops grads."""
    B, T, H = shape
    generator = torch.Generator().manual_seed(0)
    if op == "tensor copy":
        source = torch.randn(B, T, H, generator=generator).to(device)
        target = torch.empty_like(source)
        return (lambda: target.copy_(source)), (lambda: None)
    if op in ("linear_scan", "per-step loop"):
        a = torch.rand(B, T, H, generator=generator).to(device).requires_grad_()
        b = torch.randn(B, T, H, generator=generator).to(device).requires_grad_()
        upstream = torch.randn(B, T, H, generator=generator).to(device)

        def clear() -> None:
            a.grad = b.grad = None

        if op == "linear_scan":

            def step() -> None:
                clear()
                linear_scan(a, b).backward(upstream)
        else:

            def step() -> None:
                clear()
                h, states = torch.zeros(B, H, device=device), []
                for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
                    h = a_t * h + b_t
                    states.append(h)
                torch.stack(states, dim=1).backward(upstream)

        return step, clear

    rnn = (nn.LSTM if op == "nn.LSTM" else nn.GRU)(RNN_INPUT, H, batch_first=True).to(device)
    x = torch.randn(B, T, RNN_INPUT, generator=generator).to(device)

    def clear() -> None:
        rnn.zero_grad(set_to_none=True)

    def step() -> None:
        clear()
        rnn(x)[0].sum().backward()

    return step, clear


def time_cases(
    steps: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int, budget_s: float
) -> dict[str, tuple[float, int]]:
    """Median seconds and run count per case; runs are interleaved round-robin so that any
    background load hits every op alike. Slow cases get fewer runs (at least 3) to fit budget_s."""
    fastest = {name: math.inf for name in steps}
    for _ in range(max(1, warmup)):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            fastest[name] = min(fastest[name], time.perf_counter() - start)
    runs = {name: max(3, min(repeats, int(budget_s / fastest[name]))) for name in steps}
    durations: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(max(runs.values())):
        for name, step in steps.items():
            if r < runs[name]:
                start = time.perf_counter()
                step()
                synchronize(device)
                durations[name].append(time.perf_counter() - start)
    return {name: (statistics.median(durations[name]), runs[name]) for name in steps}


def _proc_status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def _cpu_memory_probe(op: str, shape: tuple[int, int, int], threads: int) -> float:
    """Peak resident-memory growth (MiB) of one fwd+bwd; runs inside a fresh subprocess."""
    torch.set_num_threads(threads)
    step, clear = make_case(op, shape, torch.device("cpu"))
    step()
    clear()
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc: hand freed heap back so the next run's pages show up in RSS
        trim(0)
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    step()
    return (_proc_status_kib("VmHWM") - before) / 1024


def cpu_peak_mib(op: str, shape: tuple[int, int, int], threads: int) -> float | None:
    B, T, H = shape
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", op, str(T)]
    command += ["--batch", str(B), "--hidden", str(H), "--threads", str(threads)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
        return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
    except (subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError):
        return None


def cuda_peak_mib(step: Callable[[], None], clear: Callable[[], None], device: torch.device) -> float:
    clear()
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def fresh_buffer_ms(shape: tuple[int, int, int], device: torch.device) -> float:
    """Median ms to allocate and first-touch one (B, T, H) fp32 buffer, minus filling a reused one."""
    reused = torch.empty(shape, device=device)
    timings = time_cases(
        {"fresh": lambda: torch.empty(shape, device=device).fill_(0.0), "reused": lambda: reused.fill_(0.0)},
        device,
        15,
        2,
        2.0,
    )
    return max(0.0, timings["fresh"][0] - timings["reused"][0]) * 1e3


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies of this process), or None off Linux."""
    try:
        machine = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(machine) - machine[3] - machine[4], int(own[11]) + int(own[12])


def time_ops(
    device: torch.device, args: argparse.Namespace, selected: dict[int, list[str]]
) -> tuple[dict[tuple[int, str], tuple[float, int]], float | None]:
    """(median s, runs) per (T, op), and the CPU cores other processes used meanwhile (None off Linux)."""
    B, H = args.batch, args.hidden
    timings: dict[tuple[int, str], tuple[float, int]] = {}
    start_wall, start_jiffies = time.perf_counter(), _cpu_jiffies()
    for T, ops in selected.items():
        print(f"timing T={T} on {device.type} ...", file=sys.stderr, flush=True)
        cases = {op: make_case(op, (B, T, H), device)[0] for op in ops}
        for op, result in time_cases(cases, device, args.repeats, args.warmup, args.budget_s).items():
            timings[(T, op)] = result
        del cases
        gc.collect()
    wall, end_jiffies = time.perf_counter() - start_wall, _cpu_jiffies()
    # Background load stalls the OpenMP threads and inflates every median; say so rather than hide it.
    other_cores = None
    if start_jiffies and end_jiffies:
        busy, own = (end - begin for end, begin in zip(end_jiffies, start_jiffies))
        other_cores = max(0, busy - own) / os.sysconf("SC_CLK_TCK") / wall
    return timings, other_cores


def peak_mib(device: torch.device, args: argparse.Namespace, op: str, T: int) -> float | None:
    """Memory growth of one fwd+bwd of op at T (None with --no-memory)."""
    if args.no_memory:
        return None
    shape = (args.batch, T, args.hidden)
    if device.type == "cuda":
        step, clear = make_case(op, shape, device)
        return cuda_peak_mib(step, clear, device)
    return cpu_peak_mib(op, shape, args.threads)


def print_bandwidth(device: torch.device, args: argparse.Namespace, medians: dict[tuple[int, str], float]) -> None:
    """The scan's achieved bandwidth at each T as a fraction of the copy's in the same run, with
    PASS/MISS at BANDWIDTH_TARGET_T."""
    for T in args.T:
        if (T, "linear_scan") in medians and (T, "tensor copy") in medians:
            copy_rate = COPY_TENSORS_MOVED / medians[(T, "tensor copy")]
            scan_rate = SCAN_TENSORS_MOVED / medians[(T, "linear_scan")]
            gbytes = args.batch * T * args.hidden * 4 / 1e9
            fraction = scan_rate / copy_rate
            verdict = (
                f"target >= 50% {'PASS' if fraction >= 0.5 else 'MISS'}"
                if T == BANDWIDTH_TARGET_T
                else f"no target at this T, it is set at T={BANDWIDTH_TARGET_T}"
            )
            print(
                f"linear_scan bandwidth on {device.type}, T={T}: {scan_rate * gbytes * 1e3:.1f} GB/s = "
                f"{100 * fraction:.0f}% of the copy's {copy_rate * gbytes * 1e3:.1f} GB/s in this run "
                f"({SCAN_TENSORS_MOVED} fp32 (B, T, H) tensors per fwd+bwd); {verdict}"
            )


def run_device(device: torch.device, args: argparse.Namespace) -> dict[tuple[int, str], float]:
    """Time every op at every T on device, then measure memory, print the table; return median ms per (T, op)."""
    B, H = args.batch, args.hidden
    selected = {
        T: [op for op in OPS if not (op == "per-step loop" and args.loop_max_T is not None and T > args.loop_max_T)]
        for T in args.T
    }
    timings, other_cores = time_ops(device, args, selected)
    if not args.no_memory:
        print("measuring peak memory ...", file=sys.stderr, flush=True)
    medians = {key: median_s * 1e3 for key, (median_s, _) in timings.items()}
    rows = [
        (T, op, medians[(T, op)], peak_mib(device, args, op, T), timings[(T, op)][1])
        if op in selected[T]
        else (T, op, None, None, 0)
        for T in args.T
        for op in OPS
    ]

    print(
        f"\n### {device.type}: fwd+bwd, fp32, B={B}, H={H}"
        + (
            f", {torch.get_num_threads()} threads"
            if device.type == "cpu"
            else f", {torch.cuda.get_device_name(device)}"
        )
    )
    print("\n| T | op | median ms | vs linear_scan | peak MiB | runs |")
    print("|---:|---|---:|---:|---:|---:|")
    for T, op, ms, peak, runs in rows:
        scan_ms = medians.get((T, "linear_scan"))
        ms_s = "skipped" if ms is None else f"{ms:.3f}"
        ratio = "" if ms is None or scan_ms is None else f"{ms / scan_ms:.1f}x"
        peak_s = "n/a" if peak is None else f"{peak:.1f}"
        print(f"| {T} | {op} | {ms_s} | {ratio} | {peak_s} | {runs} |")
    if device.type == "cpu" and other_cores is not None:
        print(
            f"\nother processes used {other_cores:.2f} CPU cores on average while timing"
            + (" (background load: medians are inflated)" if other_cores > 0.2 else "")
        )
    print(f"\n{MEMORY_NOTE[device.type]}")
    print("vs linear_scan: how many times slower than linear_scan at the same T (linear_scan itself is 1.0x).")
    for T in args.T if device.type == "cpu" else ():
        print(
            f"first touch of one fresh ({B}, {T}, {H}) fp32 buffer: {fresh_buffer_ms((B, T, H), device):.2f} ms "
            f"(linear_scan fwd+bwd allocates three: h, grad_a, grad_b)"
        )
    print_bandwidth(device, args, medians)
    return medians


def print_targets(medians: dict[tuple[int, str], float]) -> None:
    def ratio(num: tuple[int, str], den: tuple[int, str]) -> float | None:
        return medians[num] / medians[den] if num in medians and den in medians else None

    checks = [
        ("linear_scan vs nn.LSTM at T=1000", " faster", ratio((1000, "nn.LSTM"), (1000, "linear_scan")), ">=", 5),
        (
            "linear_scan vs per-step loop at T=1000",
            " faster",
            ratio((1000, "per-step loop"), (1000, "linear_scan")),
            ">=",
            30,
        ),
        ("linear_scan T=10000 / T=1000 time", "", ratio((10000, "linear_scan"), (1000, "linear_scan")), "<=", 12),
    ]
    print()
    for text, suffix, value, sign, target in checks:
        if value is None:
            print(f"{text}: n/a (needed timings not measured)")
            continue
        ok = value >= target if sign == ">=" else value <= target
        print(f"{text}: {value:.1f}x{suffix} (target {sign} {target}x) {'PASS' if ok else 'MISS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=positive_int, nargs="+", default=[100, 1000, 10000], help="sequence lengths")
    parser.add_argument(
        "--repeats", type=positive_int, default=20, help="timed runs per (op, T), fewer if over --budget-s"
    )
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs before timing")
    parser.add_argument(
        "--budget-s",
        type=positive_float,
        default=6.0,
        help="rough seconds of timed runs per (op, T); slow baselines get fewer runs, never < 3",
    )
    parser.add_argument("--batch", type=positive_int, default=32, help="B of the (B, T, H) inputs")
    parser.add_argument(
        "--hidden", type=positive_int, default=64, help="H of the (B, T, H) inputs and the RNNs' hidden size"
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads for the CPU runs")
    parser.add_argument("--loop-max-T", type=positive_int, default=None, help="skip the per-step loop above this T")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA runs even where CUDA is available")
    parser.add_argument("--memory-probe", nargs=2, metavar=("OP", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.memory_probe:
        op, T = args.memory_probe
        print(json.dumps({"peak_mib": _cpu_memory_probe(op, (args.batch, int(T), args.hidden), args.threads)}))
        return

    backend = select_backend(torch.zeros(1))
    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}, linear_scan on cpu: "
        f"{'fused C++ kernel' if backend is not EagerScan else 'eager chunked scan'}"
    )
    cpu_medians = run_device(torch.device("cpu"), args)
    print_targets(cpu_medians)
    if torch.cuda.is_available() and not args.no_cuda:
        cuda_backend = select_backend(torch.zeros(1, device="cuda"))
        print(f"linear_scan on cuda: {'Triton kernel' if cuda_backend is not EagerScan else 'eager chunked scan'}")
        run_device(torch.device("cuda"), args)


if __name__ == "__main__":
    main()
