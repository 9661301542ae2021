"""Initialisation audit: weight variance against fan-in, all-zero weights, and sigmoid/tanh
saturation on a sample batch (read by audit/gate_recorder.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from audit.auditor import Auditor, short_list
from audit.gate_recorder import SATURATION_THRESHOLD, GateRecorder, GateSaturation

SATURATED_SHARE = 0.5  # share of saturated pre-activations at which a gate is flagged
# var(W) * fan_in is 1 for LeCun/orthogonal init; outside this band the signal shrinks or grows by
# more than about 3x per layer.
VARIANCE_RATIO_RANGE = (0.1, 10.0)


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
            advice.append(
                f"All-zero weights in {short_list(self.all_zero)}: every unit they feed computes the same "
                "thing and gets the same gradient; initialise them (e.g. nn.init.xavier_uniform_)."
            )
        if self.off_scale:
            low, high = VARIANCE_RATIO_RANGE
            advice.append(
                f"Weight variance x fan-in outside [{low:g}, {high:g}] in {short_list(self.off_scale)}: "
                "signals shrink or grow layer by layer; use a fan-in-scaled init (xavier, orthogonal) unless "
                "the layer is meant to start small (e.g. a gate initialised closed)."
            )
        for gate in self.saturated:
            advice.append(
                f"{gate.function} at {gate.site} is saturated for {gate.saturated_fraction:.0%} "
                "of the sample "
                f"(|pre-activation| > {SATURATION_THRESHOLD[gate.function]:g}, mean {gate.mean:+.2f}): its "
                "gradient is below 7% of the maximum; scale its input down (e.g. a larger temperature) or "
                "re-initialise it."
            )
        return advice

    def __str__(self) -> str:
        width = max((len(w.name) for w in self.weights), default=10)
        lines = [
            f"Initialisation: {len(self.weights)} weight tensors, {len(self.all_zero)} all-zero, "
            f"{len(self.off_scale)} with variance x fan-in outside {list(VARIANCE_RATIO_RANGE)}"
        ]
        for w in self.weights:
            flag = "ALL ZERO" if w.all_zero else ("OFF SCALE" if w.name in self.off_scale else "")
            lines.append(
                f"  {w.name:<{width}}  fan_in {w.fan_in:5d}  var {w.variance:9.3e}  "
                f"var*fan_in {w.variance_times_fan_in:7.3f}  {flag}".rstrip()
            )
        if self.gates:
            site_width = max(len(g.site) for g in self.gates)
            lines.append(f"Gate pre-activations on the sample batch ({len(self.saturated)} saturated):")
            for g in self.gates:
                flag = "SATURATED" if g.saturated_fraction > SATURATED_SHARE else ""
                lines.append(
                    f"  {g.function:<7} {g.site:<{site_width}}  mean {g.mean:+7.2f}  std {g.std:6.2f}  "
                    f"max|z| {g.max_abs:6.2f}  saturated {g.saturated_fraction:6.1%}  {flag}".rstrip()
                )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _batch_input(batch: Any) -> torch.Tensor:
    """The model input of a batch: `batch["x"]` of the project's dict batches, or the tensor itself."""
    if isinstance(batch, dict):
        if "x" not in batch:
            raise ValueError(f"sample_batch has keys {sorted(batch)}; a dict batch needs an 'x' entry.")
        return batch["x"]
    if isinstance(batch, torch.Tensor):
        return batch
    raise ValueError(f"sample_batch is a {type(batch).__name__}; pass a tensor or a dict with an 'x' entry.")


class InitializationAuditor(Auditor):
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
            weights.append(
                WeightStatistics(
                    name, list(values.shape), fan_in, variance, variance * fan_in, bool((values == 0).all())
                )
            )
        gates, notes = [], []
        if self.sample_input is None:
            notes.append("no sample batch: gate saturation not checked.")
        else:
            recorder = GateRecorder(self.model)
            with torch.no_grad(), recorder:
                self.model(self.sample_input)
            gates = [statistics.summary(site) for (site, _), statistics in recorder.sites.items()]
            notes += recorder.notes
            if not gates:
                notes.append("the model computed no sigmoid or tanh on the sample batch.")
        self.report = InitializationReport(weights, gates, notes)
        return self.report
