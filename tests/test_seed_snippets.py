"""Every Python snippet of seed 000's usage sections runs as written, or is refused in one sentence
that says what to do; every `python train_hydra.py ...` line of them composes.

The snippets are copied verbatim into tests/seed_snippets/ (one file each, its header naming the
seed section). Each runs by exec in a fresh working directory, in a namespace holding only the
names the seed leaves to its reader (`model`, `loss`, `dataloader`, ...), built here from small
antipodal data. Seeds 001 and 002's device and list_runs snippets run in
tests/test_seed_snippets_runs_devices.py.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from audit.performance_audit import GradientFlowAuditor, prediction_loss
from data.antipodal import AntipodalDataModule
from lightning_module import SeamGatedLightningModule, create_trainer
from models import build_model
from models.contract import OptionError
from train_hydra import CONFIG_DIR, compose_config
from training.command_line import check_group_choices
from visualization import gate_heatmaps

SNIPPETS = Path(__file__).parent / "seed_snippets"
GPU = torch.cuda.is_available() or torch.backends.mps.is_available()
NO_GPU_SENTENCE = "accelerator='gpu' needs a CUDA or Apple MPS GPU, and this machine has none; use accelerator='auto'"


@pytest.fixture(scope="module")
def seed_context():
    """The names the seed's snippets take from their reader: small antipodal data, an untrained
    z2_seam module on it (the seed's input size 4), one batch, its loss and the model's gate
    diagnostics over 500 validation steps."""
    torch.manual_seed(0)
    datamodule = AntipodalDataModule(generator={"T": 2500, "seed": 0}, batch_size=16)
    datamodule.setup("fit")
    model = SeamGatedLightningModule(model_type="z2_seam", model_kwargs={"hidden_dim": 16})
    batch = next(iter(datamodule.train_dataloader()))
    slice_ = gate_heatmaps.collect_slice_diagnostics(model, datamodule, length=500)
    return {
        "torch": torch,
        "datamodule": datamodule,
        "model": model,
        "dataloader": datamodule.train_dataloader(),
        "device": torch.device("cpu"),
        "x": batch["x"],
        "y": batch["y"],
        "batch": batch,
        "slice": slice_,
        "gate_activations": slice_.diagnostics["gate"],
        "parity_energies": slice_.diagnostics["parity_energy"],
        "regimes": slice_.regime,
        "mask": slice_.transition,
        "transition_mask": slice_.transition,
        "plot_parity_energy_trajectory": gate_heatmaps.plot_parity_energy_trajectory,
        "plot_gate_statistics": gate_heatmaps.plot_gate_statistics,
    }


def run_snippet(name: str, namespace: dict, cwd: Path, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    source = (SNIPPETS / name).read_text()
    exec(compile(source, name, "exec"), namespace)  # noqa: S102 (the point: run the seed's text unchanged)
    return namespace


def is_one_sentence(message: str) -> bool:
    return message.endswith(".") and re.search(r"[.!?]\s+[A-Z]", message) is None and "\n" not in message


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 5000, path  # a drawn figure, not an empty canvas


def test_every_snippet_file_has_a_test():
    tested = {name[len("test_snippet_") :][:2] for name in globals() if name.startswith("test_snippet_")}
    numbers = {path.name.split("_")[1] for path in SNIPPETS.glob("000_[0-9][0-9]_*")}
    assert numbers == tested == {f"{n:02d}" for n in range(1, 13)}


def test_snippet_01_gated_delta_builds_a_next_observation_model(tmp_path, monkeypatch):
    namespace = run_snippet("000_01_gated_delta_usage.py", {}, tmp_path, monkeypatch)
    model = namespace["model"]
    assert model(torch.randn(2, 7, 4)).shape == (2, 7, 4)  # output_dim defaulted to input_dim
    # The same default in the registry, for both seam models; tokens predict the next token.
    assert build_model("z2_seam", input_dim=4, hidden_dim=16)(torch.randn(2, 7, 4)).shape == (2, 7, 4)
    assert build_model("z2_delta", vocab_size=11, hidden_dim=16)(torch.randint(11, (2, 7))).shape == (2, 7, 11)
    with pytest.raises(ValueError, match="output_dim=3 must equal input_dim=4"):
        build_model("z2_seam", input_dim=4, output_dim=3)


@pytest.mark.skipif(GPU, reason="with a GPU the snippet trains 50 epochs; this checks the refusal without one")
def test_snippet_02_lightning_module_builds_and_the_gpu_trainer_is_refused_in_one_sentence(
    tmp_path, monkeypatch, seed_context
):
    namespace = {"datamodule": seed_context["datamodule"]}
    with pytest.raises(OptionError, match=NO_GPU_SENTENCE) as refusal:
        run_snippet("000_02_lightning_usage.py", namespace, tmp_path, monkeypatch)
    assert is_one_sentence(str(refusal.value)) and refusal.value.key == "accelerator"
    model = namespace["model"]  # built before the refusal, with the seed's defaults
    assert (model.hparams.task, model.hparams.input_dim, model.hparams.output_dim) == ("regression", 4, 4)
    assert model.hparams.model_type == "z2_delta" and model.hparams.use_amp is True


def fit_one_batch(module: SeamGatedLightningModule, datamodule, root: Path, precision: str) -> None:
    trainer = create_trainer(
        max_epochs=1,
        accelerator="cpu",
        precision=precision,
        default_root_dir=root,
        fast_dev_run=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)


def test_use_amp_checks_the_trainer_precision(tmp_path, seed_context):
    datamodule = seed_context["datamodule"]

    def make(use_amp):
        return SeamGatedLightningModule(
            model_type="z2_delta",
            model_kwargs={"hidden_dim": 16},
            use_amp=use_amp,
        )

    with pytest.raises(
        OptionError,
        match=r"use_amp=True but the trainer runs at precision '32-true'; pass a mixed "
        r"precision such as '16-mixed' or 'bf16-mixed' to create_trainer\(precision",
    ):
        fit_one_batch(make(True), datamodule, tmp_path, "32-true")
    with pytest.raises(OptionError, match="use_amp=False but the trainer runs at precision 'bf16-mixed'"):
        fit_one_batch(make(False), datamodule, tmp_path, "bf16-mixed")
    module = make(True)
    before = module.model.readout.weight.detach().clone()
    fit_one_batch(module, datamodule, tmp_path, "bf16-mixed")  # mixed precision as asked: it trains
    assert not torch.equal(before, module.model.readout.weight)
    fit_one_batch(make(None), datamodule, tmp_path, "32-true")  # unset: no check


def test_snippet_03_hydra_sketch_is_not_python_and_its_commands_compose(tmp_path):
    source = (SNIPPETS / "000_03_hydra_usage.txt").read_text()
    with pytest.raises(SyntaxError):
        compile(source, "000_03_hydra_usage.txt", "exec")  # shell lines in a python block
    commands = [line for line in source.splitlines() if line.startswith("python train_hydra.py")]
    assert len(commands) == 2
    for command in commands:
        compose_command(command, tmp_path)


def test_snippet_04_gate_heatmap(tmp_path, monkeypatch, seed_context):
    namespace = run_snippet("000_04_gate_heatmap.py", dict(seed_context), tmp_path, monkeypatch)
    assert "plot_gate_heatmap" in namespace
    assert_png(tmp_path / "gates.png")


def recording(function, calls: list):
    """`function`, keeping each figure it returns in `calls` (the seed's snippets discard it)."""

    def record(*args, **kwargs):
        calls.append(function(*args, **kwargs))
        return calls[-1]

    return record


def test_snippet_05_parity_energy_trajectory(tmp_path, monkeypatch, seed_context):
    figures: list = []
    namespace = {
        **seed_context,
        "plot_parity_energy_trajectory": recording(gate_heatmaps.plot_parity_energy_trajectory, figures),
    }
    run_snippet("000_05_parity_energy.py", namespace, tmp_path, monkeypatch)
    lines = [line for ax in figures[0].axes for line in ax.get_lines()]
    assert any(set(line.get_ydata()) == {0.721} for line in lines)  # the k_star line the snippet asked for


def test_snippet_06_gate_statistics(tmp_path, monkeypatch, seed_context):
    figures: list = []
    namespace = {**seed_context, "plot_gate_statistics": recording(gate_heatmaps.plot_gate_statistics, figures)}
    run_snippet("000_06_gate_statistics.py", namespace, tmp_path, monkeypatch)
    texts = [text.get_text() for ax in figures[0].axes for text in ax.texts] + [t.get_text() for t in figures[0].texts]
    texts += [ax.get_title() for ax in figures[0].axes]
    assert any("Welch" in text for text in texts), texts


def test_snippet_07_gradient_audit_after_backward_reads_those_gradients(tmp_path, monkeypatch, seed_context, capsys):
    model = seed_context["model"]
    model.zero_grad(set_to_none=True)
    namespace = {"model": model, "loss": prediction_loss(model, seed_context["batch"])}
    stats = run_snippet("000_07_gradient_flow_audit.py", namespace, tmp_path, monkeypatch)["stats"]
    assert "Gradient flow: total norm" in capsys.readouterr().out
    # The same norms as auditing a fresh loss (the auditor's own backward): nothing was lost or doubled.
    model.zero_grad(set_to_none=True)
    fresh = GradientFlowAuditor(model).check_gradient_flow(prediction_loss(model, seed_context["batch"]))
    assert stats.total_norm > 0 and math.isclose(stats.total_norm, fresh.total_norm, rel_tol=1e-6)
    assert stats.norms.keys() == fresh.norms.keys() and not stats.no_gradient
    model.zero_grad(set_to_none=True)
    unused = prediction_loss(model, seed_context["batch"])
    unused.backward()
    model.zero_grad(set_to_none=True)  # a freed graph and no gradients left: nothing to read, so it fails
    with pytest.raises(RuntimeError, match="second time"):
        GradientFlowAuditor(model).check_gradient_flow(unused)


def test_snippet_08_initialization_audit(tmp_path, monkeypatch, seed_context, capsys):
    namespace = run_snippet("000_08_initialization_audit.py", {"model": seed_context["model"]}, tmp_path, monkeypatch)
    assert namespace["auditor"].report.weights
    assert "no sample batch" in capsys.readouterr().out


def test_snippet_09_dataloader_benchmark(tmp_path, monkeypatch, seed_context):
    stats = run_snippet(
        "000_09_dataloader_benchmark.py", {"dataloader": seed_context["dataloader"]}, tmp_path, monkeypatch
    )["stats"]
    assert stats.n_batches == 94  # the loader ends first: 1500 training windows of 16 (T=2500)


def test_snippet_10_full_audit_takes_the_seeds_pair_batch(tmp_path, monkeypatch, seed_context, capsys):
    run_snippet("000_10_full_audit.py", dict(seed_context), tmp_path, monkeypatch)
    printed = capsys.readouterr().out
    assert "Gradient flow: total norm" in printed and "Initialisation:" in printed
    from audit.performance_audit import run_full_audit

    with pytest.raises(ValueError, match="sample_batch has 3 entries; pass \\(x, y\\)"):
        run_full_audit(
            seed_context["model"],
            seed_context["dataloader"],
            "cpu",
            sample_batch=(seed_context["x"],) * 3,
            verbose=False,
        )


def test_snippet_11_visualize_saved_diagnostics(tmp_path, monkeypatch, seed_context):
    (tmp_path / "results").mkdir()
    # What `python visualization/gate_heatmaps.py --experiment RUN --output results` saves.
    torch.save(seed_context["slice"].to_dict(), tmp_path / "results" / "diagnostics.pt")
    namespace = run_snippet("000_11_visualize_results.py", {"torch": torch}, tmp_path, monkeypatch)
    assert torch.equal(namespace["diagnostics"]["gate_activation"], torch.as_tensor(seed_context["gate_activations"]))
    assert_png(tmp_path / "gate_heatmap.png")


def test_snippet_12_run_performance_audit(tmp_path, monkeypatch, seed_context, capsys):
    namespace = {key: seed_context[key] for key in ("model", "dataloader", "device")}
    run_snippet("000_12_run_performance_audit.py", namespace, tmp_path, monkeypatch)
    assert "data loader" in capsys.readouterr().out.lower()


def seed_commands() -> list[str]:
    """The `python train_hydra.py ...` lines of 000_commands.sh, backslash continuations joined."""
    text = (SNIPPETS / "000_commands.sh").read_text().replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines() if line.startswith("python train_hydra.py")]


def compose_command(command: str, output_dir: Path, every_combination: bool = False) -> int:
    """Compose the jobs of `command` and check that each override landed; returns how many.

    A -m sweep composes every value of every swept key (job i takes value i of each, cycling), or
    with `every_combination` the whole product."""
    arguments = [argument for argument in shlex.split(command)[2:] if argument != "-m"]
    check_group_choices(arguments, CONFIG_DIR)
    keys = [argument.split("=", 1)[0] for argument in arguments]
    choices = [argument.split("=", 1)[1].split(",") for argument in arguments]
    if every_combination:
        jobs = list(itertools.product(*choices))
    else:
        jobs = [tuple(values[i % len(values)] for values in choices) for i in range(max(map(len, choices), default=1))]
    for values in jobs:
        cfg = compose_config([f"{key}={value}" for key, value in zip(keys, values)], output_dir)
        for key, value in zip(keys, values):
            choices = cfg.hydra.runtime.choices  # a group override picks that config; a key override sets that value
            assert str(choices[key] if key in choices else OmegaConf.select(cfg, key)) == value, (command, key)
    return len(jobs)


def test_every_train_hydra_command_of_the_seed_composes(tmp_path):
    commands = seed_commands()
    assert len(commands) == 10 and commands[3] == "python train_hydra.py"
    assert sum(compose_command(command, tmp_path) for command in commands) == 7 + 3 + 3 + 3


@pytest.mark.slow  # 55 compositions, about 40 s on a busy machine
def test_every_job_of_the_seeds_sweeps_composes(tmp_path):
    sweeps = [command for command in seed_commands() if " -m " in command]
    assert sum(compose_command(command, tmp_path, every_combination=True) for command in sweeps) == 27 + 3 + 18
