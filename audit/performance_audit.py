"""Training-health audits: gradient flow, initialisation and gate saturation, data loading, memory.

    python audit/performance_audit.py model=z2_seam data=antipodal
    python audit/performance_audit.py model=lstm data.batch_size=256 --output /tmp/audit --n-batches 50

Each auditor measures one thing and keeps its findings in `.report`, which prints as text, turns
into JSON-ready dicts and lists its own recommendations; `run_full_audit` runs them all on one
model and data loader. The command line composes the same Hydra config as train_hydra.py (same
overrides, same one-sentence errors) and audits the freshly built model on its training data,
without training it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from models.recurrent import GATES, RecurrentCell  # noqa: E402
from training.checkpoint_io import atomic_write_text  # noqa: E402

VANISHING_GRAD_NORM = 1e-6
EXPLODING_GRAD_NORM = 10.0
# Beyond these pre-activations the derivative is below 7% of its peak (sigmoid'(4) = 0.018 of 0.25,
# tanh'(2) = 0.071 of 1), so a unit there barely passes gradient.
SATURATION_THRESHOLD = {"sigmoid": 4.0, "tanh": 2.0}
SATURATED_SHARE = 0.5  # share of saturated pre-activations at which a gate is flagged
# var(W) * fan_in is 1 for LeCun/orthogonal init; outside this band the signal shrinks or grows by
# more than about 3x per layer.
VARIANCE_RATIO_RANGE = (0.1, 10.0)
GATE_FUNCTIONS = {
    torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    torch.special.expit: "sigmoid",
    torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh",
}
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
MEGABYTE = 2.0**20
TIMED_PASSES = 3  # forward+backward passes timed by run_full_audit, after one warm-up pass
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MIN_CPU_INTERVAL_S = 0.2  # psutil's CPU percentages are clock-tick noise over shorter intervals


def _short_list(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity; they become null so that every JSON reader accepts the report."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------
# Gradient flow


@dataclass
class GradientFlowReport:
    """Per-parameter gradient norms of one backward pass and the parameters they flag."""

    norms: dict[str, float]
    total_norm: float
    vanishing: list[str]
    exploding: list[str]
    nonfinite: list[str]
    no_gradient: list[str]
    vanishing_threshold: float = VANISHING_GRAD_NORM
    exploding_threshold: float = EXPLODING_GRAD_NORM

    def scalars(self) -> dict[str, float]:
        values = {
            "grad_norm_total": self.total_norm,
            "vanishing_layers": float(len(self.vanishing)),
            "exploding_layers": float(len(self.exploding)),
            "nonfinite_grad_layers": float(len(self.nonfinite)),
        }
        values.update({f"grad_norm/{name}": norm for name, norm in self.norms.items()})
        return values

    def recommendations(self) -> list[str]:
        advice = []
        if self.nonfinite:
            advice.append(f"Non-finite gradients in {_short_list(self.nonfinite)}: the loss or a layer overflows; "
                          "lower optim.learning_rate or train in 32-true precision.")
        if self.exploding:
            worst = max(self.exploding, key=lambda name: self.norms[name])
            advice.append(f"{len(self.exploding)} parameter tensor(s) have gradient norm "
                          f"> {self.exploding_threshold:g} "
                          f"(worst: {worst} = {self.norms[worst]:.3g}): lower optim.learning_rate, keep "
                          "trainer.gradient_clip_val set, or check the scale of the inputs.")
        if self.vanishing:
            advice.append(f"{len(self.vanishing)} parameter tensor(s) have gradient norm "
                          f"< {self.vanishing_threshold:g} ({_short_list(self.vanishing)}): they barely learn; "
                          "look for saturated gates or dead units.")
        if self.no_gradient:
            advice.append(f"{len(self.no_gradient)} parameter tensor(s) received no gradient "
                          f"({_short_list(self.no_gradient)}): they do not affect the loss.")
        return advice

    def __str__(self) -> str:
        width = max((len(name) for name in self.norms), default=10)
        lines = [f"Gradient flow: total norm {self.total_norm:.3g}; {len(self.vanishing)} vanishing "
                 f"(< {self.vanishing_threshold:g}), {len(self.exploding)} exploding (> {self.exploding_threshold:g})"]
        flags = {**{n: "VANISHING" for n in self.vanishing}, **{n: "EXPLODING" for n in self.exploding},
                 **{n: "NON-FINITE" for n in self.nonfinite}}
        lines += [f"  {name:<{width}}  {norm:10.3e}  {flags.get(name, '')}".rstrip()
                  for name, norm in self.norms.items()]
        lines += [f"  {name:<{width}}  {'no grad':>10}" for name in self.no_gradient]
        return "\n".join(lines)


class _Auditor:
    """Shared `print_report` of the auditors: the report exists once the audit has run."""

    report: Any = None
    audit_method = "the audit"

    def print_report(self) -> None:
        if self.report is None:
            raise RuntimeError(f"{type(self).__name__} has no report yet; call {self.audit_method}() first.")
        print(self.report)


def check_gradient_thresholds(vanishing_threshold: float, exploding_threshold: float) -> None:
    if not 0 <= vanishing_threshold < exploding_threshold:
        raise ValueError(f"vanishing_threshold={vanishing_threshold} must be >= 0 and below "
                         f"exploding_threshold={exploding_threshold}.")


class GradientFlowAuditor(_Auditor):
    """Per-parameter gradient norms, flagging vanishing (< 1e-6) and exploding (> 10) ones.

    Args:
        model: the module whose parameters are audited.
        vanishing_threshold, exploding_threshold: gradient-norm bounds of a healthy parameter tensor.
    """

    audit_method = "check_gradient_flow"

    def __init__(self, model: nn.Module, vanishing_threshold: float = VANISHING_GRAD_NORM,
                 exploding_threshold: float = EXPLODING_GRAD_NORM) -> None:
        check_gradient_thresholds(vanishing_threshold, exploding_threshold)
        self.model = model
        self.vanishing_threshold = vanishing_threshold
        self.exploding_threshold = exploding_threshold
        self.report: GradientFlowReport | None = None

    def check_gradient_flow(self, loss: torch.Tensor | None = None) -> GradientFlowReport:
        """Backpropagate `loss` into fresh gradients and audit them. With no loss, or a loss already
        backpropagated (the seed's order: `loss.backward()`, then `check_gradient_flow(loss)`), audit
        the gradients the parameters already hold (e.g. inside a training step, before the optimiser)."""
        if loss is not None:
            self._backpropagate_unless_done(loss)
        norms: dict[str, float] = {}
        no_gradient = []
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            if parameter.grad is None:
                no_gradient.append(name)
            else:
                norms[name] = parameter.grad.detach().float().norm().item()
        finite = [norm for norm in norms.values() if math.isfinite(norm)]
        self.report = GradientFlowReport(
            norms=norms,
            total_norm=math.sqrt(sum(norm**2 for norm in finite)) if len(finite) == len(norms) else math.nan,
            vanishing=[name for name, norm in norms.items() if norm < self.vanishing_threshold],
            exploding=[name for name, norm in norms.items() if math.isfinite(norm) and norm > self.exploding_threshold],
            nonfinite=[name for name, norm in norms.items() if not math.isfinite(norm)],
            no_gradient=no_gradient,
            vanishing_threshold=self.vanishing_threshold,
            exploding_threshold=self.exploding_threshold,
        )
        return self.report

    def _backpropagate_unless_done(self, loss: torch.Tensor) -> None:
        """Replace every gradient by `loss`'s; a graph that backward already freed keeps the gradients
        that backward left (torch.autograd.grad writes nothing before it succeeds)."""
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        try:
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
        except RuntimeError as error:
            if "second time" not in str(error) or all(p.grad is None for p in parameters):
                raise
            return
        for parameter, gradient in zip(parameters, gradients):
            parameter.grad = gradient


# --------------------------------------------------------------------------------------------
# Initialisation and gate saturation


@dataclass
class GateSaturation:
    """Pre-activation statistics of one sigmoid/tanh call site over a sample batch."""

    site: str
    function: str
    count: int
    mean: float
    std: float
    max_abs: float
    saturated_fraction: float


@dataclass
class WeightStatistics:
    """Variance of one weight tensor against its fan-in."""

    name: str
    shape: list[int]
    fan_in: int
    variance: float
    variance_times_fan_in: float
    all_zero: bool


@dataclass
class InitializationReport:
    """Weight statistics of every weight tensor and gate saturation on a sample batch."""

    weights: list[WeightStatistics]
    gates: list[GateSaturation]
    notes: list[str] = field(default_factory=list)

    @property
    def all_zero(self) -> list[str]:
        return [w.name for w in self.weights if w.all_zero]

    @property
    def off_scale(self) -> list[str]:
        low, high = VARIANCE_RATIO_RANGE
        return [w.name for w in self.weights if not w.all_zero and not low <= w.variance_times_fan_in <= high]

    @property
    def saturated(self) -> list[GateSaturation]:
        return [gate for gate in self.gates if gate.saturated_fraction > SATURATED_SHARE]

    def scalars(self) -> dict[str, float]:
        values = {"zero_weight_tensors": float(len(self.all_zero)), "saturated_gates": float(len(self.saturated))}
        if self.gates:
            values["max_saturated_fraction"] = max(gate.saturated_fraction for gate in self.gates)
        return values

    def recommendations(self) -> list[str]:
        advice = []
        if self.all_zero:
            advice.append(f"All-zero weights in {_short_list(self.all_zero)}: every unit they feed computes the same "
                          "thing and gets the same gradient; initialise them (e.g. nn.init.xavier_uniform_).")
        if self.off_scale:
            low, high = VARIANCE_RATIO_RANGE
            advice.append(f"Weight variance x fan-in outside [{low:g}, {high:g}] in {_short_list(self.off_scale)}: "
                          "signals shrink or grow layer by layer; use a fan-in-scaled init (xavier, orthogonal) unless "
                          "the layer is meant to start small (e.g. a gate initialised closed).")
        for gate in self.saturated:
            advice.append(f"{gate.function} at {gate.site} is saturated for {gate.saturated_fraction:.0%} "
                          "of the sample "
                          f"(|pre-activation| > {SATURATION_THRESHOLD[gate.function]:g}, mean {gate.mean:+.2f}): its "
                          "gradient is below 7% of the maximum; scale its input down (e.g. a larger temperature) or "
                          "re-initialise it.")
        return advice

    def __str__(self) -> str:
        width = max((len(w.name) for w in self.weights), default=10)
        lines = [f"Initialisation: {len(self.weights)} weight tensors, {len(self.all_zero)} all-zero, "
                 f"{len(self.off_scale)} with variance x fan-in outside {list(VARIANCE_RATIO_RANGE)}"]
        for w in self.weights:
            flag = "ALL ZERO" if w.all_zero else ("OFF SCALE" if w.name in self.off_scale else "")
            lines.append(f"  {w.name:<{width}}  fan_in {w.fan_in:5d}  var {w.variance:9.3e}  "
                         f"var*fan_in {w.variance_times_fan_in:7.3f}  {flag}".rstrip())
        if self.gates:
            site_width = max(len(g.site) for g in self.gates)
            lines.append(f"Gate pre-activations on the sample batch ({len(self.saturated)} saturated):")
            for g in self.gates:
                flag = "SATURATED" if g.saturated_fraction > SATURATED_SHARE else ""
                lines.append(f"  {g.function:<7} {g.site:<{site_width}}  mean {g.mean:+7.2f}  std {g.std:6.2f}  "
                             f"max|z| {g.max_abs:6.2f}  saturated {g.saturated_fraction:6.1%}  {flag}".rstrip())
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class _SiteStatistics:
    """Running sums of one call site's pre-activations (so long sequences need no stored copies)."""

    def __init__(self, function: str) -> None:
        self.function = function
        self.count = 0
        self.total = 0.0
        self.total_squares = 0.0
        self.max_abs = 0.0
        self.saturated = 0

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().double()
        self.count += values.numel()
        self.total += values.sum().item()
        self.total_squares += values.pow(2).sum().item()
        self.max_abs = max(self.max_abs, values.abs().max().item() if values.numel() else 0.0)
        self.saturated += (values.abs() > SATURATION_THRESHOLD[self.function]).sum().item()

    def summary(self, site: str) -> GateSaturation:
        mean = self.total / self.count
        variance = max(self.total_squares / self.count - mean**2, 0.0)
        return GateSaturation(site, self.function, self.count, mean, math.sqrt(variance), self.max_abs,
                              self.saturated / self.count)


def _caller_location() -> str:
    """`path:line` of the innermost frame outside torch and this file: the code that called the gate."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = Path(frame.f_code.co_filename).resolve()
    if path.is_relative_to(PROJECT_ROOT):
        path = path.relative_to(PROJECT_ROOT)
    return f"{path}:{frame.f_lineno}"


def fused_rnn_gate_preactivations(
    rnn: nn.RNNBase, x: torch.Tensor, hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[list[tuple[str, str, torch.Tensor]], torch.Tensor]:
    """Gate pre-activations of a fused nn.LSTM / nn.GRU / nn.RNN(tanh) on `x`, and its output.

    The fused kernels never call torch.sigmoid/tanh where a function mode could see them, so each
    layer and direction is re-run step by step through the models' own cell (models/recurrent.py)
    with the module's weights. Returns [(gate label, "sigmoid" | "tanh", pre-activations)] and the
    last layer's output, which equals the fused module's output (a check that the re-run is the
    same computation).
    """
    if not rnn.batch_first:
        x = x.transpose(0, 1)
    family = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn"}[rnn.mode]
    cell = RecurrentCell(family, rnn.hidden_size, use_layer_norm=False)
    directions = 2 if rnn.bidirectional else 1
    h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
    found: list[tuple[str, str, torch.Tensor]] = []
    layer_input = x
    for layer in range(rnn.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            weights = tuple(getattr(rnn, kind + suffix) if rnn.bias or kind.startswith("weight") else 0.0
                            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            index = layer * directions + direction
            initial = (h0[index] if h0 is not None else None, c0[index] if c0 is not None else None)
            steps: list[tuple[torch.Tensor, ...]] = []
            sequence = layer_input.flip(1) if direction else layer_input
            output = cell(sequence, weights, initial, on_gates=steps.append)
            direction_label = " reverse" if direction else ""
            for (gate, function), values in zip(GATES[family], zip(*steps)):
                found.append((f"layer {layer}{direction_label} {gate}", function, torch.stack(values, dim=1)))
            outputs.append(output.flip(1) if direction else output)
        layer_input = torch.cat(outputs, dim=-1)
    return found, layer_input if rnn.batch_first else layer_input.transpose(0, 1)


class _GateRecorder(TorchFunctionMode):
    """Records the input of every sigmoid/tanh call by (module, source line) during a forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sites: dict[tuple[str, str], _SiteStatistics] = {}  # (site, function): one line may call both
        self.notes: list[str] = []
        self._module_stack: list[str] = []
        self._handles: list[Any] = []
        self._paused = False  # set while a fused layer is re-run, so its reference gates are not sites

    def record(self, site: str, function: str, values: torch.Tensor) -> None:
        self.sites.setdefault((site, function), _SiteStatistics(function)).add(values)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        function = GATE_FUNCTIONS.get(func)
        if function is not None and not self._paused and args and isinstance(args[0], torch.Tensor):
            module = self._module_stack[-1] if self._module_stack else "model"
            self.record(f"{module} ({_caller_location()})", function, args[0])
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name, module in self.model.named_modules():
            label = name or type(self.model).__name__
            self._handles.append(module.register_forward_pre_hook(self._enter_module(label)))
            self._handles.append(module.register_forward_hook(self._leave_module))
            if isinstance(module, nn.RNNBase):
                self._handles.append(module.register_forward_hook(self._fused_hook(label)))
        return super().__enter__()

    def __exit__(self, *exc_info):
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc_info)

    def _enter_module(self, label: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            self._module_stack.append(label)

        return hook

    def _leave_module(self, module: nn.Module, args: tuple, output: Any) -> None:
        # A forward hook that returned a value would replace the module's output; this one returns None.
        self._module_stack.pop()

    def _fused_hook(self, label: str) -> Callable:
        def hook(module: nn.RNNBase, args: tuple, output: Any) -> None:
            x, hx = args[0], args[1] if len(args) > 1 else None
            if not isinstance(x, torch.Tensor) or getattr(module, "proj_size", 0) or module.mode == "RNN_RELU":
                self.notes.append(f"{label}: this {type(module).__name__} configuration is not re-run; "
                                  "its gates are not audited.")
                return
            self._paused = True
            try:
                with torch.no_grad():
                    gates, _ = fused_rnn_gate_preactivations(module, x, hx)
            finally:
                self._paused = False
            for gate, function, values in gates:
                self.record(f"{label} ({type(module).__name__} {gate})", function, values)

        return hook


def _batch_input(batch: Any) -> torch.Tensor:
    """The model input of a batch: `batch["x"]` of the project's dict batches, or the tensor itself."""
    if isinstance(batch, dict):
        if "x" not in batch:
            raise ValueError(f"sample_batch has keys {sorted(batch)}; a dict batch needs an 'x' entry.")
        return batch["x"]
    if isinstance(batch, torch.Tensor):
        return batch
    raise ValueError(f"sample_batch is a {type(batch).__name__}; pass a tensor or a dict with an 'x' entry.")


class InitializationAuditor(_Auditor):
    """Weight scale against fan-in, all-zero weights, and sigmoid/tanh saturation on a sample batch.

    Saturation is read from the pre-activations of every sigmoid and tanh the model computes on
    `sample_batch` (intercepted with a torch function mode, labelled by module and source line);
    fused torch.nn recurrent layers are re-run from their weights to expose their gates.

    Args:
        model: the module to audit.
        sample_batch: a model input or a dict batch with `x`; without one, saturation is not checked.
    """

    audit_method = "check_initialization"

    def __init__(self, model: nn.Module, sample_batch: Any = None) -> None:
        self.model = model
        self.sample_input = None if sample_batch is None else _batch_input(sample_batch)
        self.report: InitializationReport | None = None

    def check_initialization(self) -> InitializationReport:
        weights = []
        for name, parameter in self.model.named_parameters():
            if parameter.dim() < 2:
                continue  # biases and norm gains start at constants by convention
            values = parameter.detach().float()
            fan_in = values[0].numel()
            variance = values.var(unbiased=False).item()
            weights.append(WeightStatistics(name, list(values.shape), fan_in, variance, variance * fan_in,
                                            bool((values == 0).all())))
        gates, notes = [], []
        if self.sample_input is None:
            notes.append("no sample batch: gate saturation not checked.")
        else:
            recorder = _GateRecorder(self.model)
            with torch.no_grad(), recorder:
                self.model(self.sample_input)
            gates = [statistics.summary(site) for (site, _), statistics in recorder.sites.items()]
            notes += recorder.notes
            if not gates:
                notes.append("the model computed no sigmoid or tanh on the sample batch.")
        self.report = InitializationReport(weights, gates, notes)
        return self.report


# --------------------------------------------------------------------------------------------
# Data loading


@dataclass
class DataLoaderReport:
    """Batch times of a data loader and the process's CPU and memory while it ran."""

    n_batches: int
    num_workers: int
    first_batch_ms: float
    mean_ms: float
    p95_ms: float
    max_ms: float
    process_cpu_percent: float | None  # None: the benchmark was too short to measure CPU use
    system_cpu_percent: float | None
    rss_mb: float
    step_time_ms: float | None
    verdict: str

    @property
    def input_bound(self) -> bool:
        return self.verdict.startswith("input-bound")

    def scalars(self) -> dict[str, float]:
        return {"dataloader_mean_ms": self.mean_ms, "dataloader_p95_ms": self.p95_ms}

    def recommendations(self) -> list[str]:
        if not self.input_bound:
            return []
        if self.num_workers == 0:
            return ["Data loading is a bottleneck: set data.num_workers > 0, or precompute the batches in memory."]
        return ["Data loading is a bottleneck: raise data.num_workers, enable pin_memory on CUDA, or simplify the "
                "dataset's __getitem__."]

    def __str__(self) -> str:
        step = f"; training step {self.step_time_ms:.2f} ms" if self.step_time_ms is not None else ""
        cpu = (f"CPU {self.process_cpu_percent:.0f}% (this process), {self.system_cpu_percent:.0f}% (system)"
               if self.process_cpu_percent is not None
               else f"CPU not measured (benchmark under {MIN_CPU_INTERVAL_S:g} s)")
        return (f"Data loader: {self.n_batches} batches, {self.num_workers} workers; "
                f"first batch {self.first_batch_ms:.2f} ms, "
                f"then mean {self.mean_ms:.3f} ms, p95 {self.p95_ms:.3f} ms, max {self.max_ms:.3f} ms{step}\n"
                f"  {cpu}; RSS {self.rss_mb:.0f} MB\n  verdict: {self.verdict}")


class DataLoaderAuditor(_Auditor):
    """Times batches of a data loader and judges whether it can keep up with training."""

    audit_method = "benchmark_dataloader"

    def __init__(self) -> None:
        self.report: DataLoaderReport | None = None

    def benchmark_dataloader(self, loader: Iterable, n_batches: int = 100,
                             step_time_s: float | None = None) -> DataLoaderReport:
        """Time up to `n_batches` batches (fewer if the loader ends first).

        The first batch is reported apart, since it includes starting the workers. With
        `step_time_s` (the time of one training step) the verdict compares the two; without it
        the verdict uses absolute batch times.
        """
        if n_batches < 1:
            raise ValueError(f"n_batches={n_batches} must be >= 1.")
        process = psutil.Process()
        process.cpu_percent(None)  # the first call only starts the measurement interval
        psutil.cpu_percent(None)
        times = []
        benchmark_started = time.perf_counter()
        iterator = iter(loader)
        for _ in range(n_batches):
            started = time.perf_counter()
            try:
                next(iterator)
            except StopIteration:
                break
            times.append(time.perf_counter() - started)
        if not times:
            raise ValueError("loader yielded no batches; the audit needs at least one.")
        measured = time.perf_counter() - benchmark_started >= MIN_CPU_INTERVAL_S
        process_cpu, system_cpu = process.cpu_percent(None), psutil.cpu_percent(None)
        steady = np.array(times[1:] if len(times) > 1 else times) * 1e3
        mean_ms = float(steady.mean())
        self.report = DataLoaderReport(
            n_batches=len(times),
            num_workers=int(getattr(loader, "num_workers", 0)),
            first_batch_ms=times[0] * 1e3,
            mean_ms=mean_ms,
            p95_ms=float(np.percentile(steady, 95)),
            max_ms=float(steady.max()),
            process_cpu_percent=process_cpu if measured else None,
            system_cpu_percent=system_cpu if measured else None,
            rss_mb=process.memory_info().rss / MEGABYTE,
            step_time_ms=None if step_time_s is None else step_time_s * 1e3,
            verdict=self._verdict(mean_ms, step_time_s),
        )
        return self.report

    @staticmethod
    def _verdict(mean_ms: float, step_time_s: float | None) -> str:
        if step_time_s is not None:
            share = mean_ms / (step_time_s * 1e3)
            if share > 0.5:
                return f"input-bound: a batch takes {share:.0%} as long as a training step to load."
            if share > 0.1:
                return f"noticeable: loading a batch costs {share:.0%} of a training step."
            return f"fine: loading a batch costs {share:.1%} of a training step."
        if mean_ms > 50:
            return f"input-bound: {mean_ms:.0f} ms per batch is slower than most training steps."
        return "fine: batches load in under 50 ms (no training step was timed to compare against)."


# --------------------------------------------------------------------------------------------
# Memory


@dataclass
class MemorySample:
    """Memory over one tracked block: resident set size sampled while it ran, CUDA peak allocation."""

    label: str
    rss_before_mb: float
    rss_after_mb: float
    peak_rss_mb: float
    cuda_max_allocated_mb: float | None


@dataclass
class MemoryReport:
    samples: list[MemorySample]
    system_total_mb: float
    cuda_total_mb: float | None

    @property
    def peak_rss_mb(self) -> float:
        return max(sample.peak_rss_mb for sample in self.samples)

    @property
    def cuda_max_allocated_mb(self) -> float | None:
        values = [s.cuda_max_allocated_mb for s in self.samples if s.cuda_max_allocated_mb is not None]
        return max(values) if values else None

    def scalars(self) -> dict[str, float]:
        values = {"peak_rss_mb": self.peak_rss_mb}
        if self.cuda_max_allocated_mb is not None:
            values["cuda_max_allocated_mb"] = self.cuda_max_allocated_mb
        return values

    def recommendations(self) -> list[str]:
        advice = []
        if self.peak_rss_mb > 0.8 * self.system_total_mb:
            advice.append(f"Peak RSS {self.peak_rss_mb:.0f} MB is over 80% of system memory: lower data.batch_size or "
                          "the data size held in memory.")
        if self.cuda_total_mb and self.cuda_max_allocated_mb and self.cuda_max_allocated_mb > 0.9 * self.cuda_total_mb:
            advice.append(f"CUDA max allocated {self.cuda_max_allocated_mb:.0f} MB is over 90% of the device: lower "
                          "data.batch_size or use bf16-mixed precision.")
        return advice

    def __str__(self) -> str:
        lines = [f"Memory: peak RSS {self.peak_rss_mb:.0f} MB of {self.system_total_mb:.0f} MB"
                 + (f"; CUDA max allocated {self.cuda_max_allocated_mb:.1f} MB of {self.cuda_total_mb:.0f} MB"
                    if self.cuda_max_allocated_mb is not None else "; no CUDA device")]
        for s in self.samples:
            cuda = f", CUDA max {s.cuda_max_allocated_mb:.1f} MB" if s.cuda_max_allocated_mb is not None else ""
            lines.append(f"  {s.label}: RSS {s.rss_before_mb:.0f} -> {s.rss_after_mb:.0f} MB, "
                         f"peak {s.peak_rss_mb:.0f} MB{cuda}")
        return "\n".join(lines)


class MemoryProfiler(_Auditor):
    """Peak resident memory (sampled by a background thread) and CUDA max allocated over blocks.

    `with profiler.track("forward+backward"): ...` measures one block; `start`/`stop` measure a
    span between two points in code that cannot share a `with` (such as two callback hooks).

    Args:
        device: the device whose CUDA allocations are tracked (ignored unless it is CUDA).
        poll_interval_s: how often RSS is sampled; shorter catches briefer peaks.
    """

    audit_method = "track"

    def __init__(self, device: torch.device | str = "cpu", poll_interval_s: float = 0.002) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s={poll_interval_s} must be > 0.")
        self.device = torch.device(device)
        self.poll_interval_s = poll_interval_s
        self.samples: list[MemorySample] = []
        self._process = psutil.Process()
        self._running: tuple[str, float, threading.Event, threading.Thread, list[float]] | None = None

    @property
    def running(self) -> bool:
        return self._running is not None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_available()

    def start(self, label: str) -> None:
        if self._running is not None:
            raise RuntimeError(f"MemoryProfiler is already tracking {self._running[0]!r}; stop() it first.")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        rss = self._process.memory_info().rss
        peak, stop = [rss], threading.Event()

        def poll() -> None:
            while not stop.wait(self.poll_interval_s):
                peak[0] = max(peak[0], self._process.memory_info().rss)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        self._running = (label, rss, stop, thread, peak)

    def stop(self) -> MemorySample:
        if self._running is None:
            raise RuntimeError("MemoryProfiler.stop() was called without start().")
        label, rss_before, stop, thread, peak = self._running
        self._running = None
        stop.set()
        thread.join()
        rss_after = self._process.memory_info().rss
        sample = MemorySample(
            label=label,
            rss_before_mb=rss_before / MEGABYTE,
            rss_after_mb=rss_after / MEGABYTE,
            peak_rss_mb=max(peak[0], rss_after) / MEGABYTE,
            cuda_max_allocated_mb=torch.cuda.max_memory_allocated(self.device) / MEGABYTE if self.cuda else None,
        )
        self.samples.append(sample)
        return sample

    @contextmanager
    def track(self, label: str) -> Iterator[None]:
        self.start(label)
        try:
            yield
        finally:
            self.stop()

    @property
    def report(self) -> MemoryReport | None:
        if not self.samples:
            return None
        cuda_total = torch.cuda.get_device_properties(self.device).total_memory / MEGABYTE if self.cuda else None
        return MemoryReport(list(self.samples), psutil.virtual_memory().total / MEGABYTE, cuda_total)


# --------------------------------------------------------------------------------------------
# Full audit


@dataclass
class AuditReport:
    """The reports of one audit; any of them may be absent (e.g. no data loader benchmark mid-training)."""

    initialization: InitializationReport | None = None
    gradient_flow: GradientFlowReport | None = None
    dataloader: DataLoaderReport | None = None
    memory: MemoryReport | None = None

    def _parts(self) -> list[Any]:
        parts = (self.initialization, self.gradient_flow, self.dataloader, self.memory)
        return [part for part in parts if part is not None]

    def recommendations(self) -> list[str]:
        return [advice for part in self._parts() for advice in part.recommendations()]

    def scalars(self) -> dict[str, float]:
        """Flat numbers for a logger (TensorBoard groups them under `audit/`)."""
        return {name: value for part in self._parts() for name, value in part.scalars().items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every report field, the recommendations, non-finite numbers as null."""
        content = {name: asdict(part) if part is not None else None
                   for name, part in (("initialization", self.initialization), ("gradient_flow", self.gradient_flow),
                                      ("dataloader", self.dataloader), ("memory", self.memory))}
        content["recommendations"] = self.recommendations()
        return _json_safe(content)

    def __str__(self) -> str:
        advice = self.recommendations()
        summary = ("Recommendations:\n" + "\n".join(f"  - {line}" for line in advice) if advice
                   else "Recommendations: none; nothing unhealthy was found.")
        return "\n\n".join([str(part) for part in self._parts()] + [summary])


def batch_to_device(batch: Any, device: torch.device) -> Any:
    """A tensor or the tensors of a dict batch moved to `device`."""
    if isinstance(batch, dict):
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    return batch.to(device)


def prediction_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: the task objective's (MSE, cross-entropy, ...) for a SeamGatedLightningModule,
    else the MSE of a bare model's prediction of `batch["y"]` (all steps, or the last one when y has no
    time axis)."""
    objective = getattr(model, "objective", None)
    if objective is not None:
        progress = model.training_progress()  # NaN outside a fit with a step limit: no scheduled sampling then
        return objective.training_loss(model.scored_prediction, batch, progress if math.isfinite(progress) else 0.0)[0]
    prediction = model(batch["x"]).float()
    if prediction.dim() == batch["y"].dim() + 1:
        prediction = prediction[:, -1]  # target_mode "last": only the step after the window is scored
    return nn.functional.mse_loss(prediction, batch["y"].float())


def run_full_audit(
    model: nn.Module,
    dataloader: Iterable,
    device: torch.device | str,
    sample_batch: Any = None,
    n_batches: int = 100,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = prediction_loss,
    vanishing_threshold: float = VANISHING_GRAD_NORM,
    exploding_threshold: float = EXPLODING_GRAD_NORM,
    verbose: bool = True,
) -> AuditReport:
    """Audit initialisation, gradient flow, data loading and memory of `model` on `dataloader`.

    The model moves to `device`; `sample_batch` (default: the loader's first batch; a pair (x, y) is
    the batch {"x": x, "y": y}) feeds the saturation check and forward+backward passes through
    `loss_fn`, whose gradients are audited and then cleared. Their median time is the step the data loader verdict compares against.
    """
    device = torch.device(device)
    model.to(device)
    if sample_batch is None:
        sample_batch = next(iter(dataloader))
    if isinstance(sample_batch, (tuple, list)):  # the seed's sample_batch=(x, y)
        if len(sample_batch) != 2:
            raise ValueError(f"sample_batch has {len(sample_batch)} entries; pass (x, y), a dict with 'x' and 'y', or a tensor.")
        sample_batch = {"x": sample_batch[0], "y": sample_batch[1]}
    sample_batch = batch_to_device(sample_batch, device)

    initialization = InitializationAuditor(model, sample_batch).check_initialization()
    memory = MemoryProfiler(device)
    gradient_auditor = GradientFlowAuditor(model, vanishing_threshold, exploding_threshold)
    # A model with nothing to train (e.g. a reference filter) has no gradients to audit; it is only run.
    trainable = any(parameter.requires_grad for parameter in model.parameters())
    gradients, step_times = None, []
    with memory.track(f"{1 + TIMED_PASSES} x forward{' + backward' if trainable else ''} on the sample batch"):
        for _ in range(1 + TIMED_PASSES):
            started = time.perf_counter()
            loss = loss_fn(model, sample_batch)
            if trainable:
                gradients = gradient_auditor.check_gradient_flow(loss)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    # The first pass pays one-off allocation and dispatch costs; the median of the rest is a step.
    step_time_s = float(np.median(step_times[1:]))
    with memory.track(f"{n_batches} batches of the data loader"):
        data = DataLoaderAuditor().benchmark_dataloader(dataloader, n_batches=n_batches, step_time_s=step_time_s)
    report = AuditReport(initialization, gradients, data, memory.report)
    if verbose:
        print(report)
    return report


def write_report(reports: list[tuple[str, AuditReport]], directory: Path) -> None:
    """Write report.json and report.txt of one or more labelled audits into `directory`, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    content = {
        "json": json.dumps({"audits": [{"when": label, **report.to_dict()} for label, report in reports]}, indent=2),
        "txt": "\n\n".join(f"=== Audit at {label} ===\n{report}" for label, report in reports) + "\n",
    }
    for suffix, text in content.items():
        atomic_write_text(directory / f"report.{suffix}", text)


def main(argv: list[str] | None = None) -> AuditReport:
    """Compose the config from Hydra overrides, build model and data, run the full audit, write the report."""
    # The command line needs the training entry point; the auditors above do not.
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from train_hydra import (ConfigError, build_module, check_group_choices, compose_config, config_without_hydra,
                             instantiate_from)
    from training.trainer import resolve_accelerator

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="python audit/performance_audit.py [overrides ...] [--output DIR] [--n-batches N]")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, as for train_hydra.py (model=lstm data.batch_size=128)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where report.json, report.txt and config.yaml go (default: logs/audit/runs/<timestamp>)")
    parser.add_argument("--n-batches", type=int, default=100, help="data loader batches to time (default 100)")
    args = parser.parse_args(argv)
    if args.n_batches < 1:
        parser.error(f"--n-batches {args.n_batches} must be >= 1.")
    check_group_choices(args.overrides)
    output = args.output or Path("logs") / "audit" / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    try:
        cfg = compose_config(args.overrides, output)
        # Seeded as train() seeds, so the audited weights are those a training run would start from.
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate_from(cfg, "data")
        datamodule.setup("fit")
        module = build_module(cfg, datamodule)
    except ConfigError as error:
        sys.exit(f"Invalid config: {error}")
    device = torch.device(resolve_accelerator(cfg.trainer.accelerator))
    print(f"Auditing model={cfg.model.name} on {type(datamodule).__name__} ({device})\n")
    report = run_full_audit(module, datamodule.train_dataloader(), device, n_batches=args.n_batches)
    write_report([("initialisation (untrained model)", report)], output)
    OmegaConf.save(config_without_hydra(cfg), output / "config.yaml")
    print(f"\nReport written to {output}/report.json and {output}/report.txt")
    return report


if __name__ == "__main__":
    main()
