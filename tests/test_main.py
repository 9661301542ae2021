"""main.py and the Hydra experiment: one grid, one analysis (visualization/seam_report.py), the same results."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import main
from visualization.seam_report import SeamReportCallback

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--models", "lstm", "z2_seam", "--seeds", "3", "--epochs", "1", "--overrides", "data.generator.T=1500"]


def test_main_runs_the_grid_of_the_hydra_experiment():
    experiment = OmegaConf.load(ROOT / "configs" / "experiment" / "seam_vs_baselines.yaml")
    assert main.VARIANTS == str(experiment.hydra.sweeper.params.model).split(",")
    args = main.parse_args([])
    assert args.seeds == [42, 43, 44] and args.epochs == experiment.trainer.max_epochs
    assert "hamilton_imm" not in args.models  # the report evaluates the filter itself, on every seed's data
    assert main.job_overrides(args, "lstm", 42, [])[:3] == ["experiment=seam_vs_baselines", "model=lstm", "seed=42"]
    assert main.sweep_points("data.generator.sigma_epsilon=0.01,0.3") == [
        ["data.generator.sigma_epsilon=0.01"],
        ["data.generator.sigma_epsilon=0.3"],
    ]
    with pytest.raises(SystemExit):
        main.parse_args(["--sweep", "data.generator.sigma_epsilon"])


def test_a_small_pipeline_writes_every_hypothesis_and_the_callback_writes_the_same_report(tmp_path):
    report = main.main([*TINY, "--output-dir", str(tmp_path)])
    (setting,) = report.values()
    assert setting["setting"]["sigma_epsilon"] == 0.1 and setting["seeds"] == [3]
    lstm, seam = setting["models"]["lstm"], setting["models"]["z2_seam"]
    assert lstm["h1_source"] == "probe of the state" and seam["h1_source"] == "gate"
    assert {"H1", "H2", "H3", "H4", "P1", "P2", "P3", "gap_to_filter"} <= set(seam)
    assert {"H1", "H2", "H3", "P3"} <= set(lstm) and "H4" not in lstm  # no parity energy
    for test in (seam["H1"], seam["H2"], seam["H3"], seam["H4"], lstm["H1"], lstm["P3"]):
        assert 0 <= test["p_holm"] <= 1 and test["p_holm"] >= test["p_value"]
    assert seam["H1"]["auroc"]["block_length"] >= 2 and math.isfinite(seam["H1"]["auroc"]["ci_low"])
    table = (tmp_path / "results.md").read_text()
    assert "nan" not in table.lower() and table.count("| z2_seam |") == 2
    assert json.loads((tmp_path / "results.json").read_text()).keys() == report.keys()
    figures = tmp_path / "figures"
    assert list(figures.glob("*/z2_seam/gate_heatmap.png")) and not list(figures.glob("*/lstm/*.png"))
    # The Hydra experiment's callback runs the same analysis on a sweep dir of the same runs.
    SeamReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "runs")}}}))
    assert (tmp_path / "runs" / "results.md").read_text() == table


@pytest.mark.slow  # two tiny grids, one through a Hydra multirun subprocess: ~1-3 min on 2 busy cores
def test_main_and_the_hydra_multirun_produce_the_same_results_md(tmp_path):
    main.main([*TINY, "--output-dir", str(tmp_path / "main")])
    subprocess.run(
        [
            sys.executable,
            "train_hydra.py",
            "-m",
            "experiment=seam_vs_baselines",
            "model=lstm,z2_seam",
            "seed=3",
            "trainer.max_epochs=1",
            "data.generator.T=1500",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "sweep" / "results.md").read_text() == (tmp_path / "main" / "results.md").read_text()
