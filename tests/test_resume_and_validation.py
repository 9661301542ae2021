"""Exact resume, atomic checkpoints, determinism, and bad input that fails before doing any work."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import training.checkpoint_io
from lightning_module import SeamGatedLightningModule
from train_hydra import ConfigError, build_module, compose_config, train

ROOT = Path(__file__).resolve().parents[1]
SHORT_RUN = [
    "data.generator.T=600",
    "data.batch_size=16",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=3",
    "trainer.deterministic=true",
    "trainer.accelerator=cpu",
    "callbacks.rich_progress_bar=null",
    "callbacks.early_stopping=null",
    "test=false",
    "trainer.enable_progress_bar=false",
]


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return [(event.step, event.value) for event in events.Scalars("val/mse")]


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for key in state_a:
            assert torch.equal(torch.as_tensor(state_a[key]), torch.as_tensor(state_b[key])), key
    assert a["lr_schedulers"] == b["lr_schedulers"]


class StopAfterEpochs(pl.Callback):
    """Stops a run at an epoch end, as a preempted job would, without changing its schedule."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


def test_stopping_and_resuming_gives_the_same_run_as_training_straight(tmp_path):
    straight = tmp_path / "straight"
    train(compose_config([*SHORT_RUN, "trainer.max_epochs=4"], straight))
    resumed = tmp_path / "resumed"
    stopped = compose_config([*SHORT_RUN, "trainer.max_epochs=4"], resumed)
    with open_dict(stopped):
        stopped.callbacks.stop_after_two = {"_target_": f"{__name__}.StopAfterEpochs", "epochs": 2}
    train(stopped)
    assert checkpoint(resumed)["epoch"] == 1
    train(compose_config([*SHORT_RUN, "trainer.max_epochs=4", "ckpt_path=auto"], resumed))

    assert_same_training_state(checkpoint(straight), checkpoint(resumed))
    assert val_curve(resumed)[-2:] == val_curve(straight)[-2:]
    metrics = [json.loads((run / "metrics.json").read_text())["metrics"] for run in (straight, resumed)]
    assert metrics[0]["val/mse"] == metrics[1]["val/mse"]


def test_same_seed_gives_bit_identical_runs_and_seed_zero_is_honoured(tmp_path):
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(compose_config([*SHORT_RUN, "trainer.max_epochs=1", f"seed={seed}"], tmp_path / name))
        runs.append(checkpoint(tmp_path / name)["state_dict"])
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])
    assert not all(torch.equal(runs[0][key], runs[2][key]) for key in runs[0])


def test_ckpt_path_auto_starts_fresh_when_the_run_dir_has_no_checkpoint(tmp_path):
    record = train(compose_config([*SHORT_RUN, "trainer.max_epochs=1", "ckpt_path=auto"], tmp_path))
    assert checkpoint(tmp_path)["epoch"] == 0 and record["evaluated_checkpoint"]


def test_an_interrupted_checkpoint_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    io = training.checkpoint_io.AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, target)
    before = target.read_bytes()

    def save_half_then_fail(obj, file):
        file.write(b"partial bytes of a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(training.checkpoint_io.torch, "save", save_half_then_fail)
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, target)
    assert target.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["epoch"] == 1


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("earlier_run")
    train(compose_config([*SHORT_RUN, "trainer.max_epochs=1"], run_dir))
    return run_dir


def bad_inputs(run_dir: Path) -> list[tuple[list[str], str]]:
    truncated = run_dir.parent / "truncated.ckpt"
    truncated.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes()[:2000])
    not_a_checkpoint = run_dir.parent / "notes.ckpt"
    not_a_checkpoint.write_text("these are not weights\n")
    foreign = run_dir.parent / "foreign.ckpt"
    torch.save({"state_dict": {}, "epoch": 0}, foreign)
    last = run_dir / "checkpoints" / "last.ckpt"
    return [
        (["model.hidden_dim=0"], "model.hidden_dim=0 is not allowed"),
        (["data.batch_size=-4"], "data.batch_size=-4 must be a positive integer"),
        (["data.generator.T=0"], "data.generator.T=0 must be a positive integer"),
        (["data.generator.p_switch=1.5"], "data.generator.p_switch=1.5 is outside the allowed range [0, 1]"),
        (["data.generator.p_switch=-0.1"], "data.generator.p_switch=-0.1 is outside the allowed range [0, 1]"),
        (["data.history_length=200"], "data.history_length=200 is too long"),
        (["optim.learning_rate=0"], "optim.learning_rate=0 must be > 0"),
        (["ckpt_path=" + str(run_dir / "missing.ckpt")], f"ckpt_path={run_dir / 'missing.ckpt'} does not exist"),
        ([f"ckpt_path={truncated}"], f"ckpt_path={truncated} is not a readable checkpoint"),
        ([f"ckpt_path={not_a_checkpoint}"], f"ckpt_path={not_a_checkpoint} is not a readable checkpoint"),
        ([f"ckpt_path={foreign}"], f"ckpt_path={foreign} is not a checkpoint of this framework"),
        (
            ["model=lstm", f"ckpt_path={last}"],
            f"ckpt_path={last} holds a 'z2_seam' model but the config has model=lstm",
        ),
        (
            ["model.hidden_dim=32", f"ckpt_path={last}"],
            f"ckpt_path={last} was trained with model.hidden_dim=64 but the config has model.hidden_dim=32",
        ),
        (["ckpt_path=auto", "data.generator.p_switch=2"], "data.generator.p_switch=2 is outside the allowed range"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_input_fails_in_one_sentence_and_writes_nothing(earlier_run, case):
    overrides, message = bad_inputs(earlier_run)[case]
    before = snapshot(earlier_run)
    # The bad run targets the earlier run's own dir, the worst case for damage.
    with pytest.raises(ConfigError) as error:
        train(compose_config([*SHORT_RUN, *overrides], earlier_run))
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value) and str(error.value).endswith(".")
    assert snapshot(earlier_run) == before


def test_a_model_that_does_not_fit_the_data_fails_naming_both(tmp_path):
    cfg = compose_config(["model=z2_seam"], tmp_path)
    seq2seq_data = SimpleNamespace(task="seq2seq", input_dim=4, output_dim=4, target_mode="last")
    with pytest.raises(ConfigError, match=r"^model 'z2_seam' does not fit the 'seq2seq' task of data=antipodal"):
        build_module(cfg, seq2seq_data)


@pytest.mark.slow  # two training subprocesses of several epochs: about 40 s on 2 cores
def test_a_run_killed_mid_epoch_resumes_from_last_ckpt_to_the_same_result(tmp_path):
    # Enough epochs that the kill, a few epochs in, lands well before the end: with the fused
    # kernels an epoch here takes about 0.1 s, and five epochs could finish inside the wait.
    overrides = [*SHORT_RUN, "trainer.limit_train_batches=40", "data.generator.T=2000", "trainer.max_epochs=30"]
    command = [sys.executable, str(ROOT / "train_hydra.py"), *overrides]
    crashed = tmp_path / "crashed"
    process = subprocess.Popen(
        [*command, f"hydra.run.dir={crashed}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = crashed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not (last.is_file() and torch.load(last, weights_only=True)["epoch"] >= 1):
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (crashed / "metrics.json").exists(), "the run finished before it could be killed"
    subprocess.run(
        [*command, f"hydra.run.dir={crashed}", "ckpt_path=auto"], cwd=ROOT, check=True, capture_output=True, timeout=300
    )
    straight = tmp_path / "straight"
    subprocess.run([*command, f"hydra.run.dir={straight}"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    results = [json.loads((run / "metrics.json").read_text())["metrics"] for run in (crashed, straight)]
    assert results[0]["val/mse"] == results[1]["val/mse"]
    assert_same_training_state(checkpoint(crashed), checkpoint(straight))


@pytest.mark.slow  # starts two gloo worker processes: about 30 s on 2 cores
def test_ddp_on_two_cpu_processes_trains_and_its_checkpoint_loads(tmp_path):
    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train_hydra.py"),
            "trainer=ddp_cpu",
            *SHORT_RUN,
            "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module = SeamGatedLightningModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert module(torch.randn(2, 10, 4)).shape == (2, 10, 4)
    assert json.loads((run_dir / "metrics.json").read_text())["device"] == "cpu"
