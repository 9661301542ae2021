"""AdamW as SeamGatedLightningModule builds it (`optim.*`), with torch's fused kernel where the device has one.

torch's default AdamW on CPU updates one parameter tensor at a time, about ten small ops each: for
z2_delta's 12 tensors that is 1.1 ms of a 6 ms default training step on the project's CPU. The fused
kernel does the whole update in one call, 0.27 ms (docs/speed.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

from models.contract import OptionError


def check_fused(fused: bool | str) -> None:
    if not (fused == "auto" or isinstance(fused, bool)):
        raise OptionError("fused", f"fused={fused!r} is not allowed; choose auto, true or false.")


@functools.cache
def device_has_fused_adamw(device_type: str) -> bool:
    """Whether torch has a fused AdamW for parameters on this kind of device (cpu, cuda, mps, ...)."""
    probe = torch.zeros(1, device=device_type, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    try:  # torch checks the device at the first step, not in the constructor
        torch.optim.AdamW([probe], fused=True).step()
    except RuntimeError:
        return False
    return True


def adamw_fused_flag(fused: bool | str, device: torch.device, scaled_gradients: bool = False) -> bool | None:
    """AdamW's `fused` argument for the choice `fused` (auto, True or False) on `device`: True, or
    None (torch's own per-tensor or foreach path).

    With `scaled_gradients` (an fp16 GradScaler, precision 16-mixed) a fused AdamW would unscale
    the gradients inside its own step, after Lightning's gradient clipping and the logged gradient
    norm have seen them scaled (Lightning refuses clipping then), so `auto` stays unfused. True where
    it cannot run is refused in one sentence.
    """
    check_fused(fused)
    if fused is False:
        return None
    if scaled_gradients:
        if fused is True:
            raise OptionError(
                "fused",
                "fused=true cannot run under the fp16 gradient scaler of precision 16-mixed: a fused AdamW "
                "unscales inside its step, after gradient clipping has seen the scaled gradients; set "
                "optim.fused=auto (unfused under 16-mixed) or train in bf16-mixed.",
            )
        return None
    available = device_has_fused_adamw(device.type)
    if fused is True and not available:
        raise OptionError(
            "fused",
            f"fused=true needs torch's fused AdamW, which torch {torch.__version__} lacks for {device.type} "
            "parameters; set optim.fused=auto (fused where available) or false.",
        )
    return True if available else None


def adamw(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] | list[float],
    eps: float,
    fused: bool | str = "auto",
    scaled_gradients: bool = False,
) -> torch.optim.AdamW:
    """AdamW over `parameters` (all on one device), with the fused kernel as adamw_fused_flag says."""
    parameters = list(parameters)
    device = parameters[0].device if parameters else torch.device("cpu")
    return torch.optim.AdamW(
        parameters,
        lr=learning_rate,
        weight_decay=weight_decay,
        betas=tuple(betas),
        eps=eps,
        fused=adamw_fused_flag(fused, device, scaled_gradients),
    )
