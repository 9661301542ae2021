"""Training-health audits: planted gradient and initialisation faults are flagged, the data loader
and memory audits measure, the audit callback writes its report, and the non-finite guard stops a
NaN run without harming earlier checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Dataset, TensorDataset

from audit.callbacks import NonFiniteGuard, scale_learning_rates
from audit.dataloader import DataLoaderAuditor
from audit.gate_recorder import fused_rnn_gate_preactivations
from audit.gradient_flow import GradientFlowAuditor
from audit.initialization import InitializationAuditor
from audit.memory import MemoryProfiler
from audit.performance_audit import main as audit_main
from audit.performance_audit import run_full_audit
from lightning_module import SeamGatedLightningModule
from models import build_model
from train_hydra import train
from training.schedules import warmup_cosine

SMALL_DATA = ["data.generator.T=600", "data.batch_size=16"]


class PlantedFaults(nn.Module):
    """A healthy layer, a dead one (behind a ReLU that never opens) and an exploding one (output x 1e4)."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy = nn.Linear(4, 1)
        self.dead = nn.Linear(4, 4)
        self.exploding = nn.Linear(4, 1)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dead = torch.relu(self.dead(x) - 1e3).sum(-1, keepdim=True)
        return self.healthy(x) + dead + 1e4 * self.exploding(x)


def test_gradient_auditor_flags_planted_exploding_and_dead_layers(capsys):
    torch.manual_seed(0)
    model = PlantedFaults()
    auditor = GradientFlowAuditor(model)
    with pytest.raises(RuntimeError, match="call check_gradient_flow"):
        auditor.print_report()
    report = auditor.check_gradient_flow(model(torch.randn(32, 4) + 1.0).mean())
    assert report.vanishing == ["dead.weight", "dead.bias"]
    assert report.exploding == ["exploding.weight", "exploding.bias"]
    assert report.no_gradient == ["unused.weight", "unused.bias"]
    assert not {"healthy.weight", "healthy.bias"} & set(report.vanishing + report.exploding)
    expected_total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    assert report.total_norm == pytest.approx(expected_total.item(), rel=1e-5)
    advice = " ".join(report.recommendations())
    assert "exploding.weight" in advice and "dead.weight" in advice and "unused.weight" in advice
    auditor.print_report()
    printed = capsys.readouterr().out
    assert "2 vanishing" in printed and "2 exploding" in printed and "EXPLODING" in printed


def test_gradient_auditor_reads_existing_gradients_and_flags_non_finite_ones():
    model = nn.Linear(3, 2)
    model(torch.randn(5, 3)).sum().backward()
    model.bias.grad[0] = float("nan")
    report = GradientFlowAuditor(model).check_gradient_flow()
    assert report.nonfinite == ["bias"] and np.isnan(report.total_norm)
    assert "Non-finite gradients in bias" in report.recommendations()[0]
    with pytest.raises(ValueError, match="vanishing_threshold=5 must be >= 0 and below exploding_threshold=1"):
        GradientFlowAuditor(model, vanishing_threshold=5, exploding_threshold=1)


class PlantedInit(nn.Module):
    """An all-zero layer feeding a tanh, and a 100x over-scaled layer feeding a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.zero = nn.Linear(4, 4)
        self.big = nn.Linear(4, 4)
        with torch.no_grad():
            self.zero.weight.zero_()
            self.big.weight.mul_(100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.zero(x)) + self.big(x).sigmoid()


def test_initialization_auditor_flags_zero_weights_scale_and_saturated_gates():
    torch.manual_seed(0)
    report = InitializationAuditor(PlantedInit(), torch.randn(64, 4)).check_initialization()
    assert report.all_zero == ["zero.weight"]
    assert "big.weight" in report.off_scale
    by_function = {gate.function: gate for gate in report.gates}
    assert set(by_function) == {"sigmoid", "tanh"}
    # Call sites are named by the module that ran them and the source line of the call.
    assert by_function["sigmoid"].site.startswith("PlantedInit (tests/test_audit.py:")
    assert by_function["sigmoid"].saturated_fraction > 0.8 and by_function["tanh"].saturated_fraction == 0.0
    assert [gate.function for gate in report.saturated] == ["sigmoid"]
    advice = " ".join(report.recommendations())
    assert "zero.weight" in advice and "big.weight" in advice and "sigmoid at PlantedInit" in advice
    unsampled = InitializationAuditor(PlantedInit()).check_initialization()
    assert unsampled.notes == ["no sample batch: gate saturation not checked."]


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_fused_recurrent_layers_are_rerun_exactly_to_expose_their_gates(kind):
    torch.manual_seed(0)
    rnn = kind(3, 5, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(4, 7, 3)
    gates, output = fused_rnn_gate_preactivations(rnn, x)
    torch.testing.assert_close(output, rnn(x)[0], rtol=1e-5, atol=1e-6)
    assert len(gates) == 2 * 2 * (4 if kind is nn.LSTM else 3)
    assert all(values.shape == (4, 7, 5) for _, _, values in gates)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_the_fused_rerun_through_the_model_cell_starts_from_the_given_state(kind):
    torch.manual_seed(1)
    rnn = kind(3, 5, num_layers=2, bias=False)  # sequence-first, no biases
    x, h0 = torch.randn(6, 2, 3), torch.randn(2, 2, 5)
    hx = (h0, torch.randn(2, 2, 5)) if kind is nn.LSTM else h0
    gates, output = fused_rnn_gate_preactivations(rnn, x, hx)
    torch.testing.assert_close(output, rnn(x, hx)[0], rtol=1e-5, atol=1e-6)
    assert [label for label, _, _ in gates][:2] == (
        ["layer 0 input gate", "layer 0 forget gate"]
        if kind is nn.LSTM
        else ["layer 0 reset gate", "layer 0 update gate"]
        if kind is nn.GRU
        else ["layer 0 state", "layer 1 state"]
    )


def test_initialization_auditor_sees_the_gates_of_the_fused_lstm_baseline():
    model = build_model("lstm", input_dim=4, output_dim=4, hidden_dim=8)
    report = InitializationAuditor(model, {"x": torch.randn(2, 6, 4)}).check_initialization()
    sites = [gate.site for gate in report.gates]
    gates = ("input gate", "forget gate", "cell candidate", "output gate")
    assert sites == [f"recurrent (LSTM layer 0 {gate})" for gate in gates]
    forget = report.gates[1]
    assert forget.mean == pytest.approx(1.0, abs=0.2)  # the forget-gate bias of 1


class SlowDataset(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(0.002)
        return torch.zeros(3)


def test_dataloader_auditor_times_batches_and_judges_against_the_step_time(capsys):
    slow = DataLoader(SlowDataset(), batch_size=4)
    report = DataLoaderAuditor().benchmark_dataloader(slow, n_batches=6, step_time_s=0.001)
    assert report.n_batches == 6 and report.mean_ms >= 7.0 and report.p95_ms >= report.mean_ms * 0.9
    assert report.input_bound and "num_workers" in report.recommendations()[0]
    fast = DataLoader(TensorDataset(torch.zeros(20, 3)), batch_size=4)
    auditor = DataLoaderAuditor()
    report = auditor.benchmark_dataloader(fast, n_batches=100, step_time_s=1.0)
    assert report.n_batches == 5  # the loader ends first
    assert report.verdict.startswith("fine") and not report.recommendations()
    auditor.print_report()
    assert "verdict: fine" in capsys.readouterr().out


def test_memory_profiler_catches_a_peak_inside_the_block():
    profiler = MemoryProfiler("cpu", poll_interval_s=0.001)
    with profiler.track("allocate 200 MB"):
        block = np.ones(200 * 2**20 // 8)
        time.sleep(0.05)
        del block
    sample = profiler.samples[0]
    assert sample.peak_rss_mb - sample.rss_before_mb > 150
    assert sample.cuda_max_allocated_mb is None
    assert profiler.report.peak_rss_mb == sample.peak_rss_mb and "no CUDA device" in str(profiler.report)


def test_run_full_audit_reports_every_part_and_leaves_no_gradients(make_config):
    from train_hydra import build_module, instantiate_from

    cfg = make_config(SMALL_DATA)
    datamodule = instantiate_from(cfg, "data")
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    report = run_full_audit(module, datamodule.train_dataloader(), "cpu", n_batches=5, verbose=False)
    assert {"initialization", "gradient_flow", "dataloader", "memory", "recommendations"} <= set(report.to_dict())
    assert report.dataloader.step_time_ms > 0 and report.dataloader.n_batches == 5
    assert report.gradient_flow.norms and not report.gradient_flow.nonfinite
    assert {gate.function for gate in report.initialization.gates} == {"sigmoid", "tanh"}
    assert all(p.grad is None for p in module.parameters())
    json.dumps(report.to_dict(), allow_nan=False)
    assert "Recommendations" in str(report)


def test_audit_command_line_writes_its_report(tmp_path, capsys):
    report = audit_main(["model=z2_seam", "data=antipodal", *SMALL_DATA, "--output", str(tmp_path), "--n-batches", "5"])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["audits"][0]["when"] == "initialisation (untrained model)"
    assert set(saved["audits"][0]["gradient_flow"]["norms"]) == set(report.gradient_flow.norms)
    assert "Gradient flow" in (tmp_path / "report.txt").read_text() and (tmp_path / "config.yaml").is_file()
    assert "Report written to" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="^Invalid config: model=nonexistent is not a registered model"):
        audit_main(["model=nonexistent", "--output", str(tmp_path / "bad")])


def test_fast_dev_run_with_audit_callbacks_writes_the_report(make_config):
    cfg = make_config(["debug=fdr", "callbacks=audit", "callbacks.rich_progress_bar=null", *SMALL_DATA])
    train(cfg)
    audit_dir = Path(cfg.paths.output_dir) / "audit"
    saved = json.loads((audit_dir / "report.json").read_text())
    assert [audit["when"] for audit in saved["audits"]] == ["fit start", "step 0"]
    assert saved["audits"][0]["dataloader"]["n_batches"] > 0 and saved["audits"][1]["dataloader"] is None
    assert saved["audits"][1]["gradient_flow"]["norms"]["model.readout.weight"] > 0
    text = (audit_dir / "report.txt").read_text()
    assert "=== Audit at fit start ===" in text and "=== Audit at step 0 ===" in text


def _last_weights(directory: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(directory) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_audit_callback_logs_scalars_and_leaves_training_unchanged(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train_hydra import compose_config

    common = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
        "test=false",
        "trainer.log_every_n_steps=1",
        "callbacks.rich_progress_bar=null",
        *SMALL_DATA,
    ]
    audited_cfg = compose_config(
        [*common, "callbacks=audit", "callbacks.training_audit.every_n_steps=2"], tmp_path / "audited"
    )
    train(audited_cfg)
    train(compose_config(common, tmp_path / "plain"))
    audited, plain = _last_weights(tmp_path / "audited"), _last_weights(tmp_path / "plain")
    for name in plain:
        torch.testing.assert_close(audited[name], plain[name], rtol=0, atol=0)
    events = EventAccumulator(str(tmp_path / "audited" / "tensorboard")).Reload()
    steps = [event.step for event in events.Scalars("audit/grad_norm_total")]
    assert steps == [0, 0, 2]  # fit start, step 0, step 2
    expected = {"audit/dataloader_mean_ms", "audit/peak_rss_mb", "audit/max_saturated_fraction"}
    assert expected <= set(events.Tags()["scalars"])


@pytest.mark.parametrize("schedule", ["onecycle", "cosine_warmup"])
def test_a_learning_rate_cut_survives_the_schedulers_next_steps(schedule):
    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-2)
        if schedule == "onecycle":
            return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=20)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, 4, 20))

    (cut, cut_schedule), (kept, kept_schedule) = make(), make()
    for step in range(15):
        if step == 3:
            scale_learning_rates(cut, [cut_schedule], 0.5)
        for optimizer, scheduler in ((cut, cut_schedule), (kept, kept_schedule)):
            optimizer.step()
            scheduler.step()
        if step >= 3:
            assert cut.param_groups[0]["lr"] == pytest.approx(0.5 * kept.param_groups[0]["lr"], rel=1e-9)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RecordScalarReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.of_graph_tensors = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "__float__" and args[0].requires_grad:
            self.of_graph_tensors += 1
        return func(*args, **(kwargs or {}))


def test_nonfinite_guard_reads_the_step_loss_apart_from_its_graph():
    """float() of a tensor that requires grad makes torch warn (once a process, into every run's log)."""
    loss = (torch.ones(3, requires_grad=True) * 2.0).sum()
    guard = NonFiniteGuard()
    with RecordScalarReads() as reads:
        guard.on_before_backward(SimpleNamespace(precision_plugin=None), None, loss)
    assert reads.of_graph_tensors == 0 and guard._step_loss == 6.0


def test_nonfinite_guard_stops_a_nan_run_and_keeps_earlier_checkpoints(make_config, monkeypatch, caplog):
    """From step 4 (the start of epoch 1) the loss is NaN: steps 4, 5 and 6 are skipped, each cutting the
    LR by half, then the guard saves an emergency checkpoint and stops instead of running 3 epochs."""
    cfg = make_config(
        [
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "trainer.log_every_n_steps=1",
            "callbacks.rich_progress_bar=null",
            "optim.scheduler=none",
            *SMALL_DATA,
        ]
    )
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    before_poison: dict[str, str] = {}
    original_step = SeamGatedLightningModule.training_step

    def poisoned_step(self, batch, batch_idx):
        loss = original_step(self, batch, batch_idx)
        if self.global_step < 4:
            return loss
        if not before_poison:
            before_poison.update({path.name: _file_hash(path) for path in checkpoints.glob("*.ckpt")})
        return loss * float("nan")

    monkeypatch.setattr(SeamGatedLightningModule, "training_step", poisoned_step)
    with caplog.at_level(logging.ERROR, logger="audit.callbacks"):
        record = train(cfg)

    emergency = checkpoints / "emergency_step_000007.ckpt"
    assert (
        "NonFiniteGuard stopped training at step 7: the training loss was non-finite for 3 consecutive steps"
        in caplog.text
    )
    assert str(emergency) in caplog.text
    # Earlier checkpoints are intact, byte for byte; the guard only adds its emergency checkpoint.
    assert set(before_poison) == {"epoch_000.ckpt", "last.ckpt"}
    assert {name: _file_hash(checkpoints / name) for name in before_poison} == before_poison
    assert sorted(path.name for path in checkpoints.glob("*.ckpt")) == [emergency.name, "epoch_000.ckpt", "last.ckpt"]
    # The emergency checkpoint loads, and holds the weights of the last finite step (the end of epoch 0).
    restored = SeamGatedLightningModule.load_from_checkpoint(emergency, weights_only=True)
    best = torch.load(checkpoints / "epoch_000.ckpt", weights_only=True)["state_dict"]
    for name, value in restored.state_dict().items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value, best[name], rtol=0, atol=0)
    saved = torch.load(emergency, weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(3e-3 * 0.5**3)
    assert saved["epoch"] == 1 and saved["global_step"] == 7  # stopped in epoch 1 of 3
    assert np.isfinite(record["metrics"]["val/mse"]) and np.isfinite(record["metrics"]["test/mse"])
