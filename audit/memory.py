"""Memory audit: peak resident memory over a block, sampled by a background thread, and the CUDA
peak allocation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch

from audit.auditor import MEGABYTE, Auditor


@dataclass
class MemorySample:
    """Memory over one tracked block: resident set size sampled while it ran, CUDA peak allocation."""

    label: str
    rss_before_mb: float
    rss_after_mb: float
    peak_rss_mb: float
    cuda_max_allocated_mb: float | None


@dataclass
class MemoryReport:
    samples: list[MemorySample]
    system_total_mb: float
    cuda_total_mb: float | None

    @property
    def peak_rss_mb(self) -> float:
        return max(sample.peak_rss_mb for sample in self.samples)

    @property
    def cuda_max_allocated_mb(self) -> float | None:
        values = [s.cuda_max_allocated_mb for s in self.samples if s.cuda_max_allocated_mb is not None]
        return max(values) if values else None

    def scalars(self) -> dict[str, float]:
        values = {"peak_rss_mb": self.peak_rss_mb}
        if self.cuda_max_allocated_mb is not None:
            values["cuda_max_allocated_mb"] = self.cuda_max_allocated_mb
        return values

    def recommendations(self) -> list[str]:
        advice = []
        if self.peak_rss_mb > 0.8 * self.system_total_mb:
            advice.append(
                f"Peak RSS {self.peak_rss_mb:.0f} MB is over 80% of system memory: lower data.batch_size or "
                "the data size held in memory."
            )
        if self.cuda_total_mb and self.cuda_max_allocated_mb and self.cuda_max_allocated_mb > 0.9 * self.cuda_total_mb:
            advice.append(
                f"CUDA max allocated {self.cuda_max_allocated_mb:.0f} MB is over 90% of the device: lower "
                "data.batch_size or use bf16-mixed precision."
            )
        return advice

    def __str__(self) -> str:
        lines = [
            f"Memory: peak RSS {self.peak_rss_mb:.0f} MB of {self.system_total_mb:.0f} MB"
            + (
                f"; CUDA max allocated {self.cuda_max_allocated_mb:.1f} MB of {self.cuda_total_mb:.0f} MB"
                if self.cuda_max_allocated_mb is not None
                else "; no CUDA device"
            )
        ]
        for s in self.samples:
            cuda = f", CUDA max {s.cuda_max_allocated_mb:.1f} MB" if s.cuda_max_allocated_mb is not None else ""
            lines.append(
                f"  {s.label}: RSS {s.rss_before_mb:.0f} -> {s.rss_after_mb:.0f} MB, peak {s.peak_rss_mb:.0f} MB{cuda}"
            )
        return "\n".join(lines)


class MemoryProfiler(Auditor):
    """Peak resident memory (sampled by a background thread) and CUDA max allocated over blocks.

    `with profiler.track("forward+backward"): ...` measures one block; `start`/`stop` measure a
    span between two points in code that cannot share a `with` (such as two callback hooks).

    Args:
        device: the device whose CUDA allocations are tracked (ignored unless it is CUDA).
        poll_interval_s: how often RSS is sampled; shorter catches briefer peaks.
    """

    audit_method = "track"

    def __init__(self, device: torch.device | str = "cpu", poll_interval_s: float = 0.002) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s={poll_interval_s} must be > 0.")
        self.device = torch.device(device)
        self.poll_interval_s = poll_interval_s
        self.samples: list[MemorySample] = []
        self._process = psutil.Process()
        self._running: tuple[str, float, threading.Event, threading.Thread, list[float]] | None = None

    @property
    def running(self) -> bool:
        return self._running is not None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_available()

    def start(self, label: str) -> None:
        if self._running is not None:
            raise RuntimeError(f"MemoryProfiler is already tracking {self._running[0]!r}; stop() it first.")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        rss = self._process.memory_info().rss
        peak, stop = [rss], threading.Event()

        def poll() -> None:
            while not stop.wait(self.poll_interval_s):
                peak[0] = max(peak[0], self._process.memory_info().rss)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        self._running = (label, rss, stop, thread, peak)

    def stop(self) -> MemorySample:
        if self._running is None:
            raise RuntimeError("MemoryProfiler.stop() was called without start().")
        label, rss_before, stop, thread, peak = self._running
        self._running = None
        stop.set()
        thread.join()
        rss_after = self._process.memory_info().rss
        sample = MemorySample(
            label=label,
            rss_before_mb=rss_before / MEGABYTE,
            rss_after_mb=rss_after / MEGABYTE,
            peak_rss_mb=max(peak[0], rss_after) / MEGABYTE,
            cuda_max_allocated_mb=torch.cuda.max_memory_allocated(self.device) / MEGABYTE if self.cuda else None,
        )
        self.samples.append(sample)
        return sample

    @contextmanager
    def track(self, label: str) -> Iterator[None]:
        self.start(label)
        try:
            yield
        finally:
            self.stop()

    @property
    def report(self) -> MemoryReport | None:
        if not self.samples:
            return None
        cuda_total = torch.cuda.get_device_properties(self.device).total_memory / MEGABYTE if self.cuda else None
        return MemoryReport(list(self.samples), psutil.virtual_memory().total / MEGABYTE, cuda_total)
