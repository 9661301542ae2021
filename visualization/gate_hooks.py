"""A forward hook that collects a model's per-step gate diagnostics while any loop runs it unchanged."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


class GateActivationHook:
    """Collects the per-step diagnostics of every forward call of a model without changing its output.

    While attached (`with GateActivationHook(model) as hook:`, or `attach()` ... `remove()`), each
    call `model(x)` runs as `model(x, return_diagnostics=True)`; the diagnostics are stored
    (detached, on CPU) and the caller still receives the predictions alone, so any loop, such as
    `trainer.validate`, runs unchanged. Calls that ask for diagnostics themselves get them as usual.
    Hook the network that the loop calls (`lightning_module.model`), not a wrapper around it.
    Models without gates return {} and leave nothing to collect.
    """

    def __init__(self, model: nn.Module) -> None:
        if "return_diagnostics" not in inspect.signature(model.forward).parameters:
            raise ValueError(
                f"model {type(model).__name__} has no return_diagnostics argument; GateActivationHook "
                "needs the model contract forward(x, return_diagnostics=False)."
            )
        self.model = model
        self._stored: dict[str, list[torch.Tensor]] = {}
        self._asked: list[bool] = []
        self._handles: list[Any] = []

    def attach(self) -> GateActivationHook:
        if not self._handles:
            self._handles = [
                self.model.register_forward_pre_hook(self._before, with_kwargs=True),
                self.model.register_forward_hook(self._after, with_kwargs=True),
            ]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> GateActivationHook:
        return self.attach()

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        asked = bool(args[1]) if len(args) > 1 else bool(kwargs.get("return_diagnostics", False))
        self._asked.append(asked)
        return args[:1], {**kwargs, "return_diagnostics": True}

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> Any:
        predictions, diagnostics = output
        for name, values in diagnostics.items():
            self._stored.setdefault(name, []).append(values.detach().float().cpu())
        return output if self._asked.pop() else predictions

    def collected(self) -> dict[str, torch.Tensor]:
        """Every diagnostic collected so far, calls concatenated along the batch axis: {name: (B_total, T)}."""
        result = {}
        for name, parts in self._stored.items():
            if len({part.shape[1:] for part in parts}) > 1:
                raise ValueError(
                    f"diagnostic {name!r} was collected with different sequence lengths "
                    f"{sorted({tuple(part.shape[1:]) for part in parts})}; clear() between them."
                )
            result[name] = torch.cat(parts)
        return result

    def clear(self) -> None:
        self._stored = {}


# --------------------------------------------------------------------------------------------
