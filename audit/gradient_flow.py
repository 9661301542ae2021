"""Gradient-flow audit: per-parameter gradient norms of one backward pass, flagging vanishing,
exploding, non-finite and missing gradients."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from audit.auditor import Auditor, short_list

VANISHING_GRAD_NORM = 1e-6
EXPLODING_GRAD_NORM = 10.0


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
            advice.append(
                f"Non-finite gradients in {short_list(self.nonfinite)}: the loss or a layer overflows; "
                "lower optim.learning_rate or train in 32-true precision."
            )
        if self.exploding:
            worst = max(self.exploding, key=lambda name: self.norms[name])
            advice.append(
                f"{len(self.exploding)} parameter tensor(s) have gradient norm "
                f"> {self.exploding_threshold:g} "
                f"(worst: {worst} = {self.norms[worst]:.3g}): lower optim.learning_rate, keep "
                "trainer.gradient_clip_val set, or check the scale of the inputs."
            )
        if self.vanishing:
            advice.append(
                f"{len(self.vanishing)} parameter tensor(s) have gradient norm "
                f"< {self.vanishing_threshold:g} ({short_list(self.vanishing)}): they barely learn; "
                "look for saturated gates or dead units."
            )
        if self.no_gradient:
            advice.append(
                f"{len(self.no_gradient)} parameter tensor(s) received no gradient "
                f"({short_list(self.no_gradient)}): they do not affect the loss."
            )
        return advice

    def __str__(self) -> str:
        width = max((len(name) for name in self.norms), default=10)
        lines = [
            f"Gradient flow: total norm {self.total_norm:.3g}; {len(self.vanishing)} vanishing "
            f"(< {self.vanishing_threshold:g}), {len(self.exploding)} exploding (> {self.exploding_threshold:g})"
        ]
        flags = {
            **{n: "VANISHING" for n in self.vanishing},
            **{n: "EXPLODING" for n in self.exploding},
            **{n: "NON-FINITE" for n in self.nonfinite},
        }
        lines += [
            f"  {name:<{width}}  {norm:10.3e}  {flags.get(name, '')}".rstrip() for name, norm in self.norms.items()
        ]
        lines += [f"  {name:<{width}}  {'no grad':>10}" for name in self.no_gradient]
        return "\n".join(lines)


def check_gradient_thresholds(vanishing_threshold: float, exploding_threshold: float) -> None:
    if not 0 <= vanishing_threshold < exploding_threshold:
        raise ValueError(
            f"vanishing_threshold={vanishing_threshold} must be >= 0 and below "
            f"exploding_threshold={exploding_threshold}."
        )


class GradientFlowAuditor(Auditor):
    """Per-parameter gradient norms, flagging vanishing (< 1e-6) and exploding (> 10) ones.

    Args:
        model: the module whose parameters are audited.
        vanishing_threshold, exploding_threshold: gradient-norm bounds of a healthy parameter tensor.
    """

    audit_method = "check_gradient_flow"

    def __init__(
        self,
        model: nn.Module,
        vanishing_threshold: float = VANISHING_GRAD_NORM,
        exploding_threshold: float = EXPLODING_GRAD_NORM,
    ) -> None:
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
