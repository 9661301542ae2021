"""AdamW as SeamGatedLightningModule builds it (`optim.*`), with torch's fused kernel where the device has one.

torch's default AdamW on CPU updates one parameter tensor at a time, about ten small ops each: for
z2_delta's 12 tensors that is 1.1 ms of a 6 ms default training step on the project's CPU. The fused
kernel does the whole update in one call, 0.27 ms (docs/speed.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from models.contract import OptionError


def check_fused(fused: bool | str) -> None:
    if not (fused == "auto" or isinstance(fused, bool)):
        raise OptionError("fused", f"fused={fused!r} is not allowed; choose auto, true or false.")


def check_adamw_options(
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] | list[float],
    eps: float,
    fused: bool | str,
) -> tuple[float, float]:
    """Refuses, in one sentence naming the key, an AdamW setting torch would reject or misuse; returns
    `betas` as a tuple of floats."""
    if learning_rate <= 0:
        raise OptionError("learning_rate", f"learning_rate={learning_rate} must be > 0.")
    if weight_decay < 0:
        raise OptionError("weight_decay", f"weight_decay={weight_decay} must be >= 0.")
    betas = tuple(float(beta) for beta in betas)
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise OptionError("betas", f"betas={list(betas)} must be two numbers in [0, 1).")
    if eps <= 0:
        raise OptionError("eps", f"eps={eps} must be > 0.")
    check_fused(fused)
    return betas


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


def fused_adamw_blocker(trainer: pl.Trainer | None) -> str | None:
    """What in `trainer` rules out a fused AdamW, as a phrase, or None.

    A fused AdamW unscales fp16 gradients inside its own step, so under 16-mixed's GradScaler
    gradient clipping and the logged gradient norm would see them scaled; and Lightning's
    mixed-precision plugin refuses gradient clipping for any optimizer that could (bf16-mixed too).
    """
    plugin = getattr(trainer, "precision_plugin", None)
    if not isinstance(plugin, MixedPrecision):
        return None
    if plugin.scaler is not None:
        return "the fp16 gradient scaler of precision 16-mixed (a fused AdamW unscales after clipping)"
    if trainer.gradient_clip_val:
        return f"gradient clipping under precision {plugin.precision} (Lightning refuses to clip for a fused AdamW)"
    return None


def adamw_fused_flag(fused: bool | str, device: torch.device, blocked_by: str | None = None) -> bool | None:
    """AdamW's `fused` argument for the choice `fused` (auto, True or False) on `device`: True, or
    None (torch's own per-tensor or foreach path).

    `blocked_by` names what in the run rules the fused kernel out (fused_adamw_blocker), or is
    None; `auto` then stays unfused. True where the kernel cannot run
    is refused in one sentence.
    """
    check_fused(fused)
    if fused is False:
        return None
    if blocked_by is not None:
        if fused is True:
            raise OptionError(
                "fused", f"fused=true cannot run with {blocked_by}; set optim.fused=auto (unfused there) or false."
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
    blocked_by: str | None = None,
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
        fused=adamw_fused_flag(fused, device, blocked_by),
    )
