"""Device helpers with the names of the project's seed, on top of the `auto` rules that
create_trainer applies (CUDA, then MPS, then CPU; bf16-mixed on CUDA with bf16, 16-mixed on older
CUDA, 32-true on MPS and CPU).

    python -m training.devices        # available devices, bf16 support, what `auto` picks

    from training.devices import get_best_device, should_use_mixed_precision
    device = get_best_device()                         # cuda > mps > cpu
    mixed_precision = should_use_mixed_precision(device)
"""

from __future__ import annotations

import torch

from training.trainer import resolve_accelerator, resolve_precision


def get_best_device() -> torch.device:
    """The device `trainer.accelerator=auto` trains on: CUDA, then MPS, then CPU."""
    return torch.device(resolve_accelerator("auto"))


def should_use_mixed_precision(device: torch.device | str) -> bool:
    """Whether `trainer.precision=auto` trains on `device` with mixed precision (CUDA only: fp16
    autocast is not supported on CPU, and on MPS it does not pay)."""
    return resolve_precision("auto", torch.device(device).type) != "32-true"


def bf16_support() -> dict[str, bool]:
    """Whether each available device type computes in bfloat16 natively."""
    support = {"cpu": _cpu_has_bf16()}
    if torch.cuda.is_available():
        support["cuda"] = torch.cuda.is_bf16_supported()
    if torch.backends.mps.is_available():
        try:  # MPS has bfloat16 from macOS 14 on; older systems refuse the dtype
            torch.ones(1, dtype=torch.bfloat16, device="mps")
            support["mps"] = True
        except (RuntimeError, TypeError):
            support["mps"] = False
    return support


def _cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX (Linux CPU flags): the instructions oneDNN uses for bfloat16 matmuls;
    without them bf16 on CPU is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:  # not Linux
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_report() -> str:
    """The available devices, their bf16 support, and what `auto` picks for accelerator and precision."""
    lines = [
        f"torch {torch.__version__}",
        "available devices:",
        f"  cpu: {torch.get_num_threads()} threads, vector ISA {torch.backends.cpu.get_cpu_capability()}",
    ]
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        lines.append(
            f"  cuda:{index}: {properties.name}, {properties.total_memory / 2**30:.1f} GiB, "
            f"compute capability {properties.major}.{properties.minor}"
        )
    if torch.backends.mps.is_available():
        lines.append("  mps: Apple GPU (Metal Performance Shaders)")
    lines.append("bf16 support: " + ", ".join(f"{kind} {'yes' if ok else 'no'}" for kind, ok in bf16_support().items()))
    device = get_best_device()
    lines.append(f"trainer.accelerator=auto picks: {device.type}")
    lines.append(
        f"trainer.precision=auto picks: {resolve_precision('auto', device.type)} "
        f"(mixed precision: {'yes' if should_use_mixed_precision(device) else 'no'})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(device_report())
