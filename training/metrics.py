"""The metrics each task reports for one evaluation stage (val or test), synchronised across
processes by torchmetrics."""

from __future__ import annotations

import math

import torch
import torchmetrics
from torch import nn

from data.datamodule import IGNORE_INDEX


class RegressionMetrics(nn.Module):
    """MSE over all targets, over transition targets and over stable targets, for one stage."""

    def __init__(self) -> None:
        super().__init__()
        self.mse = torchmetrics.MeanSquaredError()
        self.mse_transition = torchmetrics.MeanSquaredError()
        self.mse_stable = torchmetrics.MeanSquaredError()
        self.mse_zero = torchmetrics.MeanSquaredError()  # predicting 0: the floor any model must beat

    def update(self, prediction: torch.Tensor, target: torch.Tensor, transition: torch.Tensor | None) -> None:
        prediction, target = prediction.reshape(-1), target.reshape(-1)
        self.mse.update(prediction, target)
        self.mse_zero.update(torch.zeros_like(target), target)
        if transition is not None:
            transition = transition.reshape(-1)
            self.mse_transition.update(prediction[transition], target[transition])
            self.mse_stable.update(prediction[~transition], target[~transition])

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        """Metrics over all processes; one whose targets were all masked out is left out."""
        values = values_and_reset(self)
        if "mse" in values:
            values["loss"] = values["mse"]  # the regression loss is the MSE over all targets
        return values


class ClassificationMetrics(nn.Module):
    """Cross-entropy (without label smoothing), perplexity and accuracy over all scored tokens, and,
    where the batch says how many characters each target token covers (text data), bits per
    character: total nats / (ln 2 * characters covered), one scale for char, word and BPE tokens."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.cross_entropy = mean_metric()
        self.accuracy = torchmetrics.classification.MulticlassAccuracy(
            num_classes, average="micro", ignore_index=IGNORE_INDEX
        )
        self.nats = torchmetrics.SumMetric(nan_strategy="disable")
        self.characters = torchmetrics.SumMetric()

    def update(self, logits: torch.Tensor, target: torch.Tensor, characters: torch.Tensor | None = None) -> None:
        logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
        scored = target != IGNORE_INDEX
        losses = nn.functional.cross_entropy(logits[scored], target[scored], reduction="none")
        self.cross_entropy.update(losses)
        self.accuracy.update(logits, target)
        # Data without character counts adds 0 characters, and then reports no bits per character.
        self.nats.update(losses.sum())
        self.characters.update(characters.reshape(-1)[scored].sum() if characters is not None else 0)

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        values = values_and_reset(self)
        nats, characters = values.pop("nats"), values.pop("characters")
        if characters > 0:
            values["bits_per_character"] = nats / (math.log(2) * characters)
        if "cross_entropy" in values:
            values["loss"] = values["cross_entropy"]
            values["perplexity"] = values["cross_entropy"].exp()
        return values


def values_and_reset(metrics: nn.Module) -> dict[str, torch.Tensor]:
    """Every metric's value over all processes, NaN and inf included, then reset.

    A diverged model's NaN must reach the loggers, so that EarlyStopping(check_finite) fires and
    metrics.json records it. A metric that averaged nothing (every target masked out, e.g. a split
    without transition steps) has no value and is left out; its count is summed over DDP ranks
    first, so every rank leaves out the same ones.
    """
    values = {}
    for name, metric in metrics.named_children():
        with metric.sync_context():
            averaged_something = bool(denominator(metric) > 0)
        if averaged_something:
            values[name] = metric.compute()
        metric.reset()
    return values


def denominator(metric: torchmetrics.Metric) -> torch.Tensor:
    """How many values `metric` averages (its accumulated count)."""
    if isinstance(metric, torchmetrics.MeanSquaredError):
        return metric.total
    if isinstance(metric, torchmetrics.MeanMetric):
        return metric.weight
    if isinstance(metric, torchmetrics.SumMetric):
        return torch.ones(())  # a sum of nothing is 0, a value like any other
    return (metric.tp + metric.fn).sum()  # a micro-averaged accuracy: every scored target is a tp or an fn


def mean_metric() -> torchmetrics.MeanMetric:
    """A running mean that keeps NaN and inf (torchmetrics' default drops them with a warning)."""
    return torchmetrics.MeanMetric(nan_strategy="disable")


class Seq2SeqMetrics(nn.Module):
    """Teacher-forced cross-entropy over answer tokens, and for greedily decoded answers the share
    of exactly right answers and of right answer tokens (digits, for multiplication)."""

    def __init__(self) -> None:
        super().__init__()
        self.cross_entropy = mean_metric()
        self.exact_match = mean_metric()
        self.digit_accuracy = mean_metric()

    def update(self, logits: torch.Tensor, decoded: torch.Tensor, target: torch.Tensor) -> None:
        """logits (B, T, V) under teacher forcing, decoded (B, T) greedy tokens, target (B, T)."""
        scored = target != IGNORE_INDEX
        self.cross_entropy.update(nn.functional.cross_entropy(logits[scored], target[scored], reduction="none"))
        correct = decoded == target
        self.digit_accuracy.update(correct[scored].float())
        self.exact_match.update((correct | ~scored).all(dim=1).float())

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        values = values_and_reset(self)
        if "cross_entropy" in values:
            values["loss"] = values["cross_entropy"]
        return values
