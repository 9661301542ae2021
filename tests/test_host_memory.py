"""trainer.keep_freed_memory: after a fit with the default trainer, glibc keeps the memory a step
frees, so blocks allocated again are not faulted in again; with the switch off they are (the
negative control). Each case runs in its own process: the setting holds for the rest of a process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training import host_memory

REPO = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(host_memory._glibc() is None, reason="the C library is not glibc")

# A one-epoch fit from the composed config, then ten cycles of three 8 MiB blocks allocated,
# touched and freed: the page faults of those cycles, as JSON.
FIT_THEN_COUNT_FAULTS = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from hydra.utils import instantiate
    from train_hydra import build_module, compose_config

    cfg = compose_config([
        "model=z2_delta", "data.generator.T=600", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", *sys.argv[2:],
    ], sys.argv[1])
    datamodule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule)

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


def faults_after_fit(tmp_path: Path, *overrides: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", FIT_THEN_COUNT_FAULTS, str(tmp_path), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["faults"]


@needs_glibc
def test_after_a_default_fit_freed_blocks_are_reused_without_page_faults(tmp_path):
    assert faults_after_fit(tmp_path / "kept") < 100
    # The negative control: glibc's own thresholds hand the blocks back and fault them in again.
    assert faults_after_fit(tmp_path / "returned", "trainer.keep_freed_memory=false") > 10 * 2048


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
