"""Gate pre-activations of a forward pass: a torch function mode that records the input of every
sigmoid/tanh call by module and source line, and a re-run of fused torch.nn recurrent layers through
the models' own cells (their kernels compute the gates where no function mode sees them)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from models.recurrent import GATES, RecurrentCell

# Beyond these pre-activations the derivative is below 7% of its peak (sigmoid'(4) = 0.018 of 0.25,
# tanh'(2) = 0.071 of 1), so a unit there barely passes gradient.
SATURATION_THRESHOLD = {"sigmoid": 4.0, "tanh": 2.0}
GATE_FUNCTIONS = {
    torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    torch.special.expit: "sigmoid",
    torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh",
}
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


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
        return GateSaturation(
            site, self.function, self.count, mean, math.sqrt(variance), self.max_abs, self.saturated / self.count
        )


def _caller_location() -> str:
    """`path:line` of the innermost frame outside torch and this file: the code that called the gate."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_code.co_filename.startswith(TORCH_DIR) or frame.f_code.co_filename == __file__
    ):
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
            weights = tuple(
                getattr(rnn, kind + suffix) if rnn.bias or kind.startswith("weight") else 0.0
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
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


class GateRecorder(TorchFunctionMode):
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
                self.notes.append(
                    f"{label}: this {type(module).__name__} configuration is not re-run; its gates are not audited."
                )
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
