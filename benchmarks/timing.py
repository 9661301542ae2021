"""Timing shared by the benchmarks: wall clock that waits for the GPU, and the median training step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from training.optimizers import adamw


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so the wall clock measures the kernels and not their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
) -> Callable[[], None]:
    """One training step (forward, loss, backward, AdamW) of `model` on (x, y), as a function to time.
    AdamW is the one train_hydra.py builds (fused where the device has the kernel, optim.fused=auto)."""
    model = model.to(device).train()
    optimizer = adamw(model.parameters(), learning_rate=1e-3, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8)
    x, y = x.to(device), y.to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        optimizer.step()

    return step


def interleaved_median_seconds(
    steps: dict[str, Callable[[], None]], repeats: dict[str, int], device: torch.device
) -> dict[str, float]:
    """Median wall time of each step over `repeats[name]` runs, after one warm-up run each
    (allocator, kernels, lazy init, compilation). The runs go round-robin over the steps, so a burst
    of background load slows every candidate alike and the ratios between them stay fair."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(max(repeats.values())):
        for name, step in steps.items():
            if round_index >= repeats[name]:
                continue
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def median_train_step_seconds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    repeats: int,
    device: torch.device,
) -> float:
    """Median wall time of `repeats` training steps of one model on (x, y), after one warm-up step."""
    return interleaved_median_seconds({"step": train_step(model, x, y, loss, device)}, {"step": repeats}, device)[
        "step"
    ]
