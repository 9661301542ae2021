"""callbacks=audit works on every data module: the audit scores the task's own training loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train_hydra import train

DATA = {
    "antipodal": ["model=z2_seam", "data.generator.T=600", "data.batch_size=16"],
    "antipodal_field": [
        "model=convgru",
        "data=antipodal_field",
        "data.generator.T=600",
        "data.batch_size=16",
        "data.grid_size=8",
        "model.hidden_channels=4",
    ],
    "text": ["model=lstm", "data=text", "data.corpus_characters=20000", "data.sequence_length=50"],
    "multiplication": [
        "model=transformer",
        "data=multiplication",
        "data.num_pairs=500",
        "model.d_model=32",
        "model.num_heads=2",
        "model.num_layers=2",
    ],
}


@pytest.mark.parametrize("data", list(DATA))
def test_a_fast_dev_run_with_the_audit_callback_audits_the_task_loss(make_config, data):
    cfg = make_config(["debug=fdr", "callbacks=audit", "callbacks.rich_progress_bar=null", *DATA[data]])
    train(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "audit" / "report.json").read_text())
    assert [audit["when"] for audit in saved["audits"]] == ["fit start", "step 0"]
    for audit in saved["audits"]:
        norms = audit["gradient_flow"]["norms"]
        assert norms and all(value > 0 for value in norms.values()), data
