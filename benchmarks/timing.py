"""Timing shared by the benchmarks: wall clock that waits for the GPU, and the median training step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so the wall clock measures the kernels and not their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_train_step_seconds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    repeats: int,
    device: torch.device,
) -> float:
    """Median wall time of `repeats` training steps (forward, loss, backward, AdamW) on (x, y),
    after one warm-up step (allocator, kernels, lazy init)."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = x.to(device), y.to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        optimizer.step()

    step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
