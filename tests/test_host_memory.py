"""trainer.keep_freed_memory: after a fit with the default trainer, glibc keeps the memory a step
frees, so blocks allocated again are not faulted in again; an allocator that hands them back
faults them in on every cycle (the negative control: the probe sees it); and
trainer.keep_freed_memory=false leaves the allocator alone. Each probe runs in its own process:
the setting holds for the rest of a process. (glibc's own adaptive thresholds hand back some
cycles' blocks and not others, 4 to 20 thousand faults over the probe's ten cycles here, so they
make no steady control.)"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import QUICK_FIT
from hydra.utils import instantiate

from training import host_memory

REPO = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(host_memory._glibc() is None, reason="the C library is not glibc")

# Ten cycles of three 8 MiB blocks allocated, touched and freed: their page faults, as JSON.
COUNT_FAULTS = textwrap.dedent(
    """
    import json, resource
    import torch

    def cycle():
        blocks = [torch.ones(2 * 1024 * 1024) for _ in range(3)]
        del blocks

    for _ in range(3):
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        cycle()
    print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
    """
)

# An allocator that hands every 8 MiB block back: glibc's mmap threshold fixed at 1 MiB.
HAND_BACK = textwrap.dedent(
    """
    import ctypes
    assert ctypes.CDLL(None).mallopt(-3, 1024 * 1024) == 1  # M_MMAP_THRESHOLD
    """
)

# A one-epoch fit from the composed config (output dir and overrides from the command line) first.
FIT = textwrap.dedent(
    """
    import sys
    from hydra.utils import instantiate
    from train_hydra import build_module, compose_config

    cfg = compose_config(sys.argv[2:], sys.argv[1])
    datamodule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule)
    """
)


def page_faults(script: str, *arguments: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", script + COUNT_FAULTS, *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["faults"]


@needs_glibc
def test_after_a_default_fit_freed_blocks_are_reused_without_page_faults(tmp_path):
    assert page_faults(FIT, str(tmp_path), *QUICK_FIT) < 100
    # The negative control: blocks handed back are faulted in again, 2048 pages each, every cycle.
    assert page_faults(HAND_BACK) >= 10 * 3 * 2048


def test_keep_freed_memory_false_leaves_the_allocator_alone(make_config):
    def allocator_callbacks(overrides):
        trainer = instantiate(make_config([*QUICK_FIT, *overrides]).trainer, logger=False)
        return [c for c in trainer.callbacks if isinstance(c, host_memory.KeepFreedMemory)]

    assert len(allocator_callbacks([])) == 1
    assert allocator_callbacks(["trainer.keep_freed_memory=false"]) == []


def test_without_glibc_nothing_changes_and_one_line_says_so(monkeypatch, caplog):
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    host_memory.keep_freed_memory.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=host_memory.__name__):
            for stage in ("fit", "test"):
                host_memory.KeepFreedMemory().setup(None, None, stage)
    finally:
        host_memory.keep_freed_memory.cache_clear()
    assert [r.getMessage() for r in caplog.records] == [
        "keep_freed_memory: the C library is not glibc; its allocator keeps its own defaults."
    ]
