"""Gate figures and run plots: every figure renders non-blank with its panels, regimes and
transitions line up, the statistics are scipy's, the heatmap callback writes its files without
changing training, and the post-hoc scripts rebuild figures from a run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml
from conftest import train_like_the_cli
from scipy import stats

from analysis.statistics import gate_transition_statistics
from data.antipodal import transition_mask
from models import build_model
from models.parity import K_STAR
from train_hydra import compose_config, train
from visualization import plot_runs
from visualization.gate_heatmaps import main as gate_heatmaps_main
from visualization.gate_hooks import GateActivationHook
from visualization.gate_plots import plot_gate_heatmap, plot_gate_statistics, plot_parity_energy_trajectory
from visualization.gate_slices import collect_slice_diagnostics

ROOT = Path(__file__).resolve().parents[1]
SWITCHES = [40, 100, 103, 170]
FIRST_STEP = 6000


@pytest.fixture
def planted():
    """A 240-step series whose gate is high in transition windows (radius 5) around 4 switches."""
    rng = np.random.default_rng(0)
    regime = np.ones(240, dtype=int)
    for switch in SWITCHES:
        regime[switch:] *= -1
    transition = transition_mask(regime, 5)
    gate = np.clip(0.15 + 0.5 * transition + rng.normal(0, 0.1, 240), 0, 1)
    energy = np.clip(0.4 + 0.4 * transition + rng.normal(0, 0.1, 240), 0, 1)
    return {"regime": regime, "transition": transition, "gate": gate, "energy": energy}


def assert_png_not_blank(path: Path) -> None:
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels[..., :3].var() > 1e-3, f"{path} looks blank"


def test_every_gate_plot_writes_a_non_blank_png_with_its_panels(planted, tmp_path):
    figures = {
        "heatmap": (
            plot_gate_heatmap(
                {"gate": planted["gate"], "update_gate": planted["energy"]},
                planted["regime"],
                planted["transition"],
                save_path=tmp_path / "heatmap.png",
            ),
            3,
        ),
        "heatmap_alone": (plot_gate_heatmap(planted["gate"], save_path=tmp_path / "heatmap_alone.png"), 2),
        "heatmap_transitions": (
            plot_gate_heatmap(
                planted["gate"], transition_mask=planted["transition"], save_path=tmp_path / "heatmap_transitions.png"
            ),
            3,
        ),
        "parity": (
            plot_parity_energy_trajectory(
                planted["energy"],
                planted["gate"],
                regime_sequence=planted["regime"],
                transition_mask=planted["transition"],
                save_path=tmp_path / "parity.png",
            ),
            3,
        ),
        "parity_alone": (
            plot_parity_energy_trajectory(planted["energy"], planted["gate"], save_path=tmp_path / "parity_alone.png"),
            2,
        ),
        "statistics": (
            plot_gate_statistics(planted["gate"], planted["transition"], save_path=tmp_path / "statistics.png"),
            3,
        ),
    }
    for name, (figure, axes) in figures.items():
        assert len(figure.axes) == axes, name
        assert_png_not_blank(tmp_path / f"{name}.png")


def _spans(ax) -> list[tuple[float, float]]:
    return sorted(
        (patch.get_x(), patch.get_x() + patch.get_width()) for patch in ax.patches if patch.get_gid() == "transition"
    )


def _switch_lines(ax) -> list[float]:
    return sorted(line.get_xdata()[0] for line in ax.lines if line.get_gid() == "switch")


def test_heatmap_regime_switches_line_up_with_the_transition_shading(planted):
    figure = plot_gate_heatmap(planted["gate"], planted["regime"], planted["transition"], first_step=FIRST_STEP)
    heat, regime_ax = figure.axes[0], figure.axes[1]
    expected_switches = [FIRST_STEP + s + 0.5 for s in SWITCHES]  # before x_{s+1}, the first step s changes
    assert _switch_lines(heat) == _switch_lines(regime_ax) == expected_switches
    # Observable windows s+1 .. s+5 after each switch; those of 100 and 103 overlap into one shaded run.
    windows = [(41, 45), (101, 108), (171, 175)]
    assert _spans(regime_ax) == [(FIRST_STEP + a - 0.5, FIRST_STEP + b + 0.5) for a, b in windows]
    for switch in expected_switches:  # every window starts at or after its switch line, never before
        assert any(start <= switch < stop for start, stop in _spans(regime_ax))
    # The regime bands change colour exactly at the switch lines.
    edges = {round(x, 6) for band in regime_ax.collections for x in band.get_paths()[0].vertices[:, 0]}
    assert set(expected_switches) <= set(edges)


def test_time_range_selects_steps_on_the_time_axis(planted):
    figure = plot_parity_energy_trajectory(
        planted["energy"],
        planted["gate"],
        regime_sequence=planted["regime"],
        transition_mask=planted["transition"],
        first_step=FIRST_STEP,
        time_range=(FIRST_STEP + 90, FIRST_STEP + 120),
    )
    energy_ax = figure.axes[0]
    assert energy_ax.get_xlim() == (FIRST_STEP + 89.5, FIRST_STEP + 119.5)
    assert _switch_lines(energy_ax) == [FIRST_STEP + 100.5, FIRST_STEP + 103.5]
    assert [line.get_ydata()[0] for line in energy_ax.lines if line.get_gid() == "k_star"] == [K_STAR]
    with pytest.raises(ValueError, match=r"time_range=\(0, 10\) holds none of the steps 6000..6239"):
        plot_gate_heatmap(planted["gate"], first_step=FIRST_STEP, time_range=(0, 10))


def test_mismatched_series_are_rejected_naming_the_argument(planted):
    with pytest.raises(ValueError, match="^transition_mask has 10 steps but the gate series has 240"):
        plot_gate_heatmap(planted["gate"], transition_mask=planted["transition"][:10])
    with pytest.raises(ValueError, match="^transition_mask marks 0 transition and 240 stable steps"):
        gate_transition_statistics(planted["gate"], np.zeros(240, dtype=bool))


def test_welch_statistics_are_scipys_on_planted_data():
    rng = np.random.default_rng(1)
    inside, outside = rng.normal(0.6, 0.1, 40), rng.normal(0.3, 0.2, 200)
    gate = np.concatenate([inside, outside])
    transition = np.arange(240) < 40
    result = gate_transition_statistics(gate, transition)
    reference = stats.ttest_ind(inside, outside, equal_var=False, alternative="greater")
    assert result.welch_t == pytest.approx(reference.statistic, rel=1e-12)
    assert result.welch_p == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.welch_df == pytest.approx(reference.df, rel=1e-12)
    pooled = np.sqrt((39 * inside.var(ddof=1) + 199 * outside.var(ddof=1)) / 238)
    assert result.cohens_d == pytest.approx((inside.mean() - outside.mean()) / pooled, rel=1e-12)
    u = stats.mannwhitneyu(inside, outside).statistic
    assert result.auroc == pytest.approx(u / (40 * 200), rel=1e-6)


def test_a_planted_difference_is_significant_and_equal_data_is_not(planted):
    planted_result = gate_transition_statistics(planted["gate"], planted["transition"])
    assert planted_result.significant and planted_result.welch_p < 1e-10
    assert np.isfinite([planted_result.welch_t, planted_result.cohens_d, planted_result.auroc]).all()
    assert planted_result.cohens_d > 2 and planted_result.auroc > 0.95
    same = np.random.default_rng(5).normal(0.5, 0.1, 240)
    equal_result = gate_transition_statistics(same, planted["transition"])
    assert not equal_result.significant and equal_result.welch_p > 0.05 and 0.35 < equal_result.auroc < 0.65
    constant = gate_transition_statistics(np.full(240, 0.5), planted["transition"])
    assert not constant.significant and constant.auroc == pytest.approx(0.5)


def test_gate_activation_hook_collects_diagnostics_without_changing_outputs():
    torch.manual_seed(0)
    model = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=16)
    x = torch.randn(3, 7, 4)
    plain = model(x)
    with GateActivationHook(model) as hook:
        hooked = model(x)
        asked, diagnostics = model(x[:2], return_diagnostics=True)
    torch.testing.assert_close(hooked, plain)
    collected = hook.collected()
    assert set(collected) == {"gate", "parity_energy"} and collected["gate"].shape == (5, 7)
    torch.testing.assert_close(collected["gate"][3:], diagnostics["gate"])
    assert isinstance(model(x), torch.Tensor)  # removed on exit
    with GateActivationHook(build_model("lstm", input_dim=4, output_dim=4)) as lstm_hook:
        lstm_hook.model(x)
    assert set(lstm_hook.collected()) == {"state"}  # no gates: only the hidden state, for the regime probe
    assert lstm_hook.collected()["state"].shape == (3, 7, 64)
    with pytest.raises(ValueError, match="model Linear has no return_diagnostics argument"):
        GateActivationHook(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("target_mode", ["last", "next_step"])
def test_slice_diagnostics_are_consecutive_steps_each_read_through_its_own_window(target_mode):
    from data.antipodal import AntipodalDataModule

    torch.manual_seed(0)
    datamodule = AntipodalDataModule(generator={"T": 600, "seed": 3}, history_length=6, target_mode=target_mode)
    datamodule.setup()
    model = build_model("z2_seam", input_dim=4, output_dim=4, hidden_dim=16)
    data = collect_slice_diagnostics(model, datamodule, length=50, offset=7, batch_size=16)
    start = datamodule.bounds["val"][0] + 6 - 1 + 7
    np.testing.assert_array_equal(data.steps, np.arange(start, start + 50))
    np.testing.assert_array_equal(data.transition, datamodule.sequence.transition[start : start + 50])
    t = int(data.steps[20])
    window = torch.as_tensor(datamodule.sequence.x[t - 5 : t + 1], dtype=torch.float32)[None]
    _, direct = model(window, return_diagnostics=True)
    assert data.diagnostics["gate"][20] == pytest.approx(direct["gate"][0, -1].item(), abs=1e-6)
    assert model.training  # the mode is restored


SHORT_RUN = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.rich_progress_bar=null",
    "data.generator.T=1000",
    "data.batch_size=16",
]


@pytest.fixture(scope="module")
def heatmap_run(tmp_path_factory) -> Path:
    """A short z2_seam run with callbacks=heatmap (drawing every epoch), saved as the CLI would save it."""
    output = tmp_path_factory.mktemp("heatmap_run")
    train_like_the_cli(
        [
            "callbacks=heatmap",
            "callbacks.gate_heatmap.every_n_epochs=1",
            "callbacks.gate_heatmap.slice_length=120",
            *SHORT_RUN,
        ],
        output,
    )
    return output


def test_heatmap_callback_writes_figures_diagnostics_and_tensorboard_images(heatmap_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for tag in ("epoch_000", "epoch_001"):
        for name in ("gate_heatmap", "parity_energy", "gate_statistics"):
            assert_png_not_blank(heatmap_run / "figures" / tag / f"{name}.png")
    assert not (heatmap_run / "figures" / "final").exists()  # the last validation already drew the final weights
    saved = torch.load(heatmap_run / "figures" / "diagnostics.pt", weights_only=True)
    assert set(saved["diagnostics"]) == {"epoch_000", "epoch_001"}
    assert saved["diagnostics"]["epoch_001"]["gate"].shape == saved["steps"].shape == (120,)
    assert (saved["steps"].diff() == 1).all() and saved["transition"].any()
    events = EventAccumulator(str(heatmap_run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"gates/gate_heatmap", "gates/parity_energy", "gates/gate_statistics"} <= set(events.Tags()["images"])
    assert len(events.Images("gates/gate_heatmap")) == 2
    assert {"gates/auroc", "gates/welch_p", "gates/cohens_d"} <= set(events.Tags()["scalars"])


def test_heatmap_callback_does_not_change_training(heatmap_run, tmp_path):
    train(compose_config(SHORT_RUN, tmp_path))
    drawn = torch.load(heatmap_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    plain = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name in plain:
        torch.testing.assert_close(drawn[name], plain[name], rtol=0, atol=0)


def test_posthoc_script_rebuilds_the_figures_of_a_run(heatmap_run, tmp_path):
    last = heatmap_run / "checkpoints" / "last.ckpt"
    paths = gate_heatmaps_main(
        ["--experiment", str(heatmap_run), "--checkpoint", str(last), "--length", "120", "--output", str(tmp_path)]
    )
    assert sorted(paths) == ["gate_heatmap", "gate_statistics", "parity_energy"]
    for path in paths.values():
        assert_png_not_blank(path)
    # Same weights, same slice: the diagnostics the callback saved at the end of training.
    rebuilt = torch.load(tmp_path / "diagnostics.pt", weights_only=True)
    during = torch.load(heatmap_run / "figures" / "diagnostics.pt", weights_only=True)
    torch.testing.assert_close(rebuilt["diagnostics"]["gate"], during["diagnostics"]["epoch_001"]["gate"])
    torch.testing.assert_close(rebuilt["steps"], during["steps"])


def test_posthoc_command_runs_as_documented(heatmap_run):
    # `make install` puts the checkout on the venv's path (an editable install); PYTHONPATH stands in for it
    # here, so the suite also runs in a venv that has only the requirements.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "visualization/gate_heatmaps.py", "--experiment", str(heatmap_run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = [Path(line) for line in result.stdout.split()]
    assert {path.name for path in written} == {"gate_heatmap.png", "parity_energy.png", "gate_statistics.png"}
    assert all(path.parent == heatmap_run / "figures" / "posthoc" and path.is_file() for path in written)


def test_posthoc_script_rejects_a_dir_that_is_not_a_run(heatmap_run, capsys):
    with pytest.raises(SystemExit):
        gate_heatmaps_main(["--experiment", str(heatmap_run / "figures")])
    assert f"run directory {heatmap_run / 'figures'} has no .hydra/config.yaml" in capsys.readouterr().err


def test_plot_runs_draws_the_training_curves_of_a_run(heatmap_run, tmp_path):
    written = plot_runs.main([str(heatmap_run), "--output", str(tmp_path)])
    assert written == [tmp_path / "training_curves.png"]
    assert_png_not_blank(written[0])
    run = plot_runs.read_run(heatmap_run)
    assert {"train/loss", "val/mse", "train/lr"} <= set(run.scalars)
    panels = [tag for tag, _, _ in plot_runs.CURVES if tag in run.scalars]
    figure = plot_runs.plot_training_curves([run])
    assert len([ax for ax in figure.axes if ax.get_visible()]) == len(panels)


def _fake_job(job: Path, model: str, seed: int, val_mse: float) -> None:
    """A job dir as a sweep writes it: overrides, metrics.json and TensorBoard scalars."""
    from torch.utils.tensorboard import SummaryWriter

    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model={model}", f"seed={seed}", "trainer=fast"]))
    metrics = {"val/mse": val_mse, "test/mse": val_mse * 1.1, "val/mse_zero": 0.003}
    (job / "metrics.json").write_text(json.dumps({"model": model, "metrics": metrics}))
    writer = SummaryWriter(str(job / "tensorboard"))
    for step in range(0, 50, 10):
        writer.add_scalar("train/loss", val_mse * (2 - step / 50), step)
        writer.add_scalar("val/mse", val_mse * (1.5 - step / 100), step)
    writer.close()


def test_plot_runs_compares_the_jobs_of_a_sweep_by_their_swept_hyperparameters(tmp_path, capsys):
    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00-000000"
    for number, (model, seed, mse) in enumerate(
        [("z2_seam", 1, 0.0028), ("z2_seam", 2, 0.0029), ("lstm", 1, 0.0030), ("lstm", 2, 0.0031)]
    ):
        _fake_job(sweep / str(number), model, seed, mse)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    written = plot_runs.main([str(sweep)])
    assert written == [sweep / "figures" / "training_curves.png", sweep / "figures" / f"sweep_{sweep.name}.png"]
    for path in written:
        assert_png_not_blank(path)
    runs, is_sweep = plot_runs.find_runs(sweep)
    assert is_sweep and plot_runs.label_runs(runs, is_sweep) == ["model", "seed"]
    assert runs[2].label == "2: model=lstm, seed=1"
    table = plot_runs.sweep_table(runs, ["model", "seed"])
    assert list(table.columns) == ["job", "model", "seed", "val/mse", "test/mse"]
    assert len(plot_runs.plot_sweep(runs, ["model", "seed"], sweep.name).axes) == 2  # one panel per metric
    printed = capsys.readouterr().out
    assert "swept: model, seed" in printed and "0.0031" in printed


def test_plot_runs_draws_the_filter_as_a_horizontal_reference_line(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    _fake_job(tmp_path / "model", "z2_seam", 1, 0.0028)
    filter_job = tmp_path / "filter"
    (filter_job / ".hydra").mkdir(parents=True)
    (filter_job / "metrics.json").write_text(json.dumps({"model": "hamilton_imm", "metrics": {"val/mse": 0.0025}}))
    writer = SummaryWriter(str(filter_job / "tensorboard"))
    writer.add_scalar("val/mse", 0.0025, 0)  # evaluated once, at step 0
    writer.close()
    runs = [plot_runs.read_run(tmp_path / "model"), plot_runs.read_run(filter_job)]
    figure = plot_runs.plot_training_curves(runs)
    panel = next(ax for ax in figure.axes if ax.get_title() and ax.get_ylabel() == "val/mse")
    references = [line for line in panel.lines if line.get_gid() == "reference"]
    assert len(references) == 1 and np.allclose(references[0].get_ydata(), 0.0025)
    assert list(references[0].get_xdata()) == [0, 1]  # axes coordinates: the whole panel width
