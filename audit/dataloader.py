"""Data-loader audit: batch times, CPU and memory while a loader runs, and whether training would
wait for it."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import psutil

from audit.auditor import MEGABYTE, Auditor

MIN_CPU_INTERVAL_S = 0.2  # psutil's CPU percentages are clock-tick noise over shorter intervals


@dataclass
class DataLoaderReport:
    """Batch times of a data loader and the process's CPU and memory while it ran."""

    n_batches: int
    num_workers: int
    first_batch_ms: float
    mean_ms: float
    p95_ms: float
    max_ms: float
    process_cpu_percent: float | None  # None: the benchmark was too short to measure CPU use
    system_cpu_percent: float | None
    rss_mb: float
    step_time_ms: float | None
    verdict: str

    @property
    def input_bound(self) -> bool:
        return self.verdict.startswith("input-bound")

    def scalars(self) -> dict[str, float]:
        return {"dataloader_mean_ms": self.mean_ms, "dataloader_p95_ms": self.p95_ms}

    def recommendations(self) -> list[str]:
        if not self.input_bound:
            return []
        if self.num_workers == 0:
            return ["Data loading is a bottleneck: set data.num_workers > 0, or precompute the batches in memory."]
        return [
            "Data loading is a bottleneck: raise data.num_workers, enable pin_memory on CUDA, or simplify the "
            "dataset's __getitem__."
        ]

    def __str__(self) -> str:
        step = f"; training step {self.step_time_ms:.2f} ms" if self.step_time_ms is not None else ""
        cpu = (
            f"CPU {self.process_cpu_percent:.0f}% (this process), {self.system_cpu_percent:.0f}% (system)"
            if self.process_cpu_percent is not None
            else f"CPU not measured (benchmark under {MIN_CPU_INTERVAL_S:g} s)"
        )
        return (
            f"Data loader: {self.n_batches} batches, {self.num_workers} workers; "
            f"first batch {self.first_batch_ms:.2f} ms, "
            f"then mean {self.mean_ms:.3f} ms, p95 {self.p95_ms:.3f} ms, max {self.max_ms:.3f} ms{step}\n"
            f"  {cpu}; RSS {self.rss_mb:.0f} MB\n  verdict: {self.verdict}"
        )


class DataLoaderAuditor(Auditor):
    """Times batches of a data loader and judges whether it can keep up with training."""

    audit_method = "benchmark_dataloader"

    def __init__(self) -> None:
        self.report: DataLoaderReport | None = None

    def benchmark_dataloader(
        self, loader: Iterable, n_batches: int = 100, step_time_s: float | None = None
    ) -> DataLoaderReport:
        """Time up to `n_batches` batches (fewer if the loader ends first).

        The first batch is reported apart, since it includes starting the workers. With
        `step_time_s` (the time of one training step) the verdict compares the two; without it
        the verdict uses absolute batch times.
        """
        if n_batches < 1:
            raise ValueError(f"n_batches={n_batches} must be >= 1.")
        process = psutil.Process()
        process.cpu_percent(None)  # the first call only starts the measurement interval
        psutil.cpu_percent(None)
        times = []
        benchmark_started = time.perf_counter()
        iterator = iter(loader)
        for _ in range(n_batches):
            started = time.perf_counter()
            try:
                next(iterator)
            except StopIteration:
                break
            times.append(time.perf_counter() - started)
        if not times:
            raise ValueError("loader yielded no batches; the audit needs at least one.")
        measured = time.perf_counter() - benchmark_started >= MIN_CPU_INTERVAL_S
        process_cpu, system_cpu = process.cpu_percent(None), psutil.cpu_percent(None)
        steady = np.array(times[1:] if len(times) > 1 else times) * 1e3
        mean_ms = float(steady.mean())
        self.report = DataLoaderReport(
            n_batches=len(times),
            num_workers=int(getattr(loader, "num_workers", 0)),
            first_batch_ms=times[0] * 1e3,
            mean_ms=mean_ms,
            p95_ms=float(np.percentile(steady, 95)),
            max_ms=float(steady.max()),
            process_cpu_percent=process_cpu if measured else None,
            system_cpu_percent=system_cpu if measured else None,
            rss_mb=process.memory_info().rss / MEGABYTE,
            step_time_ms=None if step_time_s is None else step_time_s * 1e3,
            verdict=self._verdict(mean_ms, step_time_s),
        )
        return self.report

    @staticmethod
    def _verdict(mean_ms: float, step_time_s: float | None) -> str:
        if step_time_s is not None:
            share = mean_ms / (step_time_s * 1e3)
            if share > 0.5:
                return f"input-bound: a batch takes {share:.0%} as long as a training step to load."
            if share > 0.1:
                return f"noticeable: loading a batch costs {share:.0%} of a training step."
            return f"fine: loading a batch costs {share:.1%} of a training step."
        if mean_ms > 50:
            return f"input-bound: {mean_ms:.0f} ms per batch is slower than most training steps."
        return "fine: batches load in under 50 ms (no training step was timed to compare against)."
