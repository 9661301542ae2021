"""main.py: the seam pipeline runs end to end and its tables are complete and finite."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import main


def test_bootstrap_detects_a_planted_gain_at_transitions_and_not_an_absent_one():
    rng = np.random.default_rng(0)
    transition = rng.random(4000) < 0.3
    planted = rng.normal(0, 1, 4000) + 0.5 * transition
    assert main.bootstrap_transition_gain(planted, transition, seed=1)["p_value"] < 0.01
    equal = rng.normal(0, 1, 4000)
    result = main.bootstrap_transition_gain(equal, transition, seed=1)
    assert result["p_value"] > 0.05 and result["ci_low"] < result["difference"] < result["ci_high"]


def test_a_small_pipeline_writes_complete_finite_tables(tmp_path):
    results = main.main(["--models", "lstm", "z2_seam", "--seeds", "3", "--epochs", "1",
                         "--overrides", "data.generator.T=1500", "--output-dir", str(tmp_path)])
    assert list(results["test_metrics"]) == ["lstm", "z2_seam", "hamilton_imm"]
    for per_seed in results["test_metrics"].values():
        assert all(math.isfinite(m[key]) for m in per_seed for key in ("test/mse", "test/mse_stable", "test/mse_transition"))
    seam = results["predictions"]["z2_seam"][0]
    assert {"prediction_1", "prediction_2", "prediction_3", "gate_imm_correlation"} <= set(seam)
    assert all(math.isfinite(seam["prediction_2"][key]) for key in ("welch_t", "welch_p", "cohens_d", "auroc"))
    assert set(results["predictions"]["lstm"][0]) == {"prediction_3"}  # no gates to test
    table = (tmp_path / "results.md").read_text()
    assert "nan" not in table.lower() and table.count("| z2_seam |") == 2
    assert json.loads((tmp_path / "results.json").read_text())["seeds"] == [3]
    assert (tmp_path / "figures" / "z2_seam" / "gate_heatmap.png").is_file()


@pytest.mark.slow  # the --quick preset: about 10 minutes on 2 CPU cores
def test_quick_preset_puts_the_reference_filter_at_the_floor(tmp_path):
    results = main.main(["--quick", "--output-dir", str(tmp_path)])
    reference = np.array([m["test/mse"] for m in results["test_metrics"]["hamilton_imm"]])
    for name, per_seed in results["test_metrics"].items():
        trained = np.array([m["test/mse"] for m in per_seed])
        spread = np.std(trained - reference, ddof=1) / np.sqrt(len(trained))
        # A trained model clearly below the filter (beyond two standard errors) would be a bug.
        assert (trained - reference).mean() >= -2 * spread, name
