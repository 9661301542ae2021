"""The seed documents' usage snippets for device helpers (seed 001) and run management (seed 002),
copied here as the seeds write them and run against this project.

Where a seed names a file of its own layout, the project's module stands in for it, and the test
says which: `device_utils` is `training.devices`; `./scripts/list_runs.py` is
`python -m visualization.list_runs`; `./scripts/resume_training.sh <run_id> [force]` is
`python -m visualization.list_runs --resume <run_id> [--force]`.
"""

from __future__ import annotations

import sys

import torch
from conftest import train_like_the_cli

from visualization.list_runs import main as list_runs_main

DEVICE_SNIPPET = """
from device_utils import get_best_device, should_use_mixed_precision

device = get_best_device()  # Auto-selects: MPS > CUDA > CPU
mixed_precision = should_use_mixed_precision(device)
"""

LIST_RUNS_OPTIONS = """
- `--rescan`: Rescan runs directory
- `--id <run_id>`: Show details for specific run ID
- `--sort <method>`: Sort method: date, step, or loss
- `--limit <n>`: Limit number of runs to show
"""


def test_the_device_snippet_runs_as_written(monkeypatch):
    import training.devices

    monkeypatch.setitem(sys.modules, "device_utils", training.devices)  # the seed's module name
    namespace: dict = {}
    exec(DEVICE_SNIPPET, namespace)  # noqa: S102 (the point: run the seed's text unchanged)
    assert isinstance(namespace["device"], torch.device)
    assert namespace["mixed_precision"] is (namespace["device"].type == "cuda")


def test_every_list_runs_option_of_the_seed_works(tmp_path):
    run_dir = tmp_path / "train" / "runs" / "2026-01-01_10-00-00-000001"
    train_like_the_cli(
        [
            "debug=fdr",
            "trainer.fast_dev_run=false",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "test=false",
        ],
        run_dir,
    )
    options = [line.split("`")[1].split() for line in LIST_RUNS_OPTIONS.strip().splitlines()]
    assert [option[0] for option in options] == ["--rescan", "--id", "--sort", "--limit"]
    root = ["--root", str(tmp_path)]
    assert "finished" in list_runs_main([*root, "--rescan"])
    assert "status: finished" in list_runs_main([*root, "--id", "2026-01-01_10-00-00-000001"])
    for method in ("date", "step", "loss"):  # "Sort method: date, step, or loss"
        assert "000001" in list_runs_main([*root, "--sort", method])
    assert len(list_runs_main([*root, "--limit", "1"]).splitlines()) == 2  # header and one run
