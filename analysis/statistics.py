"""Statistics for dependent time series: circular block bootstrap, Holm correction, AUROC, correlation.

Every interval and p-value of the seam experiment comes from `block_bootstrap` (docs/seam_experiment.md,
"Statistics"). Steps of one trajectory are autocorrelated (regimes last ~1/p_switch steps, windows
overlap), so resampling single steps would treat ~20 dependent steps as 20 independent ones and give
intervals that are far too narrow. The circular block bootstrap (Politis & Romano, 1992) resamples
blocks of `block_length` consecutive steps, wrapping at the end so every step is equally likely.

Block length rule (`choose_block_length`): the larger of n^(1/3) (the classic rate for the mean) and
twice the decorrelation lag of the series, the first lag at which its sample autocorrelation falls
below 1/e. A block then spans the dependence of the series; for a regime indicator with
p_switch = 0.05 (autocorrelation 0.9^k) that is 2 * 10 = 20 steps.

Series from several independent trajectories (one per seed) are resampled within each trajectory
(`groups`), so the blocks never join two trajectories.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

SIGNIFICANCE = 0.05
RESAMPLES = 1000
ALTERNATIVES = ("two-sided", "greater", "less")


def as_series(values: Any, name: str, length: int | None = None, dtype: Any = float) -> np.ndarray:
    """A non-empty 1-D per-step series (numpy, torch or a list), checked against `length`."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=dtype)
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass at least one time step.")
    if array.ndim != 1:
        raise ValueError(f"{name} has shape {array.shape}; pass one value per time step (a 1-D series).")
    if length is not None and len(array) != length:
        raise ValueError(f"{name} has {len(array)} steps but the gate series has {length}; pass one value per step.")
    return array


def decorrelation_lag(series: np.ndarray, max_lag: int | None = None) -> int:
    """The first lag k >= 1 at which the sample autocorrelation of `series` is below 1/e (1 if constant)."""
    centred = np.asarray(series, dtype=float) - np.mean(series)
    variance = centred @ centred
    if variance == 0 or len(centred) < 3:
        return 1
    max_lag = min(max_lag or len(centred) // 4, len(centred) - 1)
    for lag in range(1, max_lag + 1):
        if (centred[:-lag] @ centred[lag:]) / variance < math.exp(-1):
            return lag
    return max_lag


def choose_block_length(*series: np.ndarray) -> int:
    """max(ceil(n^(1/3)), 2 * the largest decorrelation lag of the series), at most n // 2."""
    n = len(series[0])
    rule = max(math.ceil(n ** (1 / 3)), 2 * max(decorrelation_lag(np.asarray(s, dtype=float)) for s in series))
    return int(max(1, min(rule, n // 2)))


def circular_block_indices(n: int, block_length: int, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """(resamples, n) indices: ceil(n / L) blocks of L consecutive steps (mod n), cut to n."""
    blocks = math.ceil(n / block_length)
    starts = rng.integers(0, n, size=(resamples, blocks))
    return ((starts[:, :, None] + np.arange(block_length)) % n).reshape(resamples, -1)[:, :n]


def grouped_block_indices(
    groups: np.ndarray, block_length: int, rng: np.random.Generator, resamples: int
) -> np.ndarray:
    """Circular block indices drawn within each group (trajectory) separately, concatenated."""
    parts = []
    for value in np.unique(groups):
        members = np.flatnonzero(groups == value)
        local = circular_block_indices(len(members), min(block_length, max(1, len(members) // 2)), rng, resamples)
        parts.append(members[local])
    return np.concatenate(parts, axis=1)


@dataclass(frozen=True)
class BootstrapResult:
    """A statistic with its percentile interval and a bootstrap p-value against `null`.

    p_value: z = (estimate - null) / (standard deviation of the resampled estimates), referred to
    the normal distribution (two-sided, or one tail for `greater` / `less`). A count of resamples
    beyond the null could not go below 1 / (B + 1), which Holm over dozens of tests would turn into
    "nothing is significant" whatever the data; the bootstrap standard error resolves small p.
    """

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    null: float
    alternative: str
    block_length: int
    resamples: int
    confidence: float

    def interval(self, digits: int = 3) -> str:
        return f"{self.estimate:.{digits}g} [{self.ci_low:.{digits}g}, {self.ci_high:.{digits}g}]"


def block_bootstrap(
    statistic: Callable[..., float],
    arrays: Sequence[np.ndarray],
    null: float = 0.0,
    alternative: str = "two-sided",
    block_length: int | None = None,
    groups: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Circular block bootstrap of `statistic(*arrays)`; all arrays share their first axis (time).

    block_length: None applies `choose_block_length` to the arrays; groups: one id per step
    (e.g. the seed of its trajectory), resampled separately.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r} is not one of {', '.join(ALTERNATIVES)}.")
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays) or n < 2:
        raise ValueError(f"block_bootstrap needs arrays of one length >= 2, got {[len(a) for a in arrays]}.")
    if block_length is None:
        block_length = choose_block_length(*[a.astype(float) for a in arrays if a.ndim == 1])
    rng = np.random.default_rng(seed)
    if groups is None:
        indices = circular_block_indices(n, block_length, rng, resamples)
    else:
        indices = grouped_block_indices(np.asarray(groups), block_length, rng, resamples)
    estimate = float(statistic(*arrays))
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        resampled = np.array([statistic(*[a[index] for a in arrays]) for index in indices], dtype=float)
    resampled = resampled[np.isfinite(resampled)]
    if not math.isfinite(estimate) or len(resampled) == 0:
        return BootstrapResult(
            estimate, math.nan, math.nan, math.nan, null, alternative, block_length, resamples, confidence
        )
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    spread = float(resampled.std(ddof=1)) if len(resampled) > 1 else 0.0
    distance = estimate - null
    z = distance / spread if spread > 0 else math.copysign(math.inf, distance) if distance else 0.0
    if alternative == "two-sided":
        p_value = 2 * stats.norm.sf(abs(z))
    elif alternative == "greater":
        p_value = stats.norm.sf(z)
    else:
        p_value = stats.norm.cdf(z)
    return BootstrapResult(
        estimate, float(low), float(high), float(p_value), null, alternative, block_length, resamples, confidence
    )


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN, uncounted."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, (m - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2 (Mann-Whitney U / (n1 n0))."""
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either series is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else math.nan


def mean_difference(values: np.ndarray, mask: np.ndarray) -> float:
    """mean(values[mask]) - mean(values[~mask]) (NaN when either side is empty)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return math.nan
    return float(values[mask].mean() - values[~mask].mean())


@dataclass(frozen=True)
class GateTransitionStatistics:
    """How much higher the gate is at transition steps than at stable steps (descriptive).

    welch_t / welch_p / welch_df: one-sided Welch t-test, H1: mean(transition) > mean(stable). It
    treats steps as independent, so its p-value is optimistic for time series; the hypothesis tests
    of the experiment use the block bootstrap (analysis.hypotheses).
    cohens_d: mean difference over the pooled standard deviation.
    auroc: probability that a random transition step has a higher gate than a random stable step.
    """

    n_transition: int
    n_stable: int
    mean_transition: float
    mean_stable: float
    welch_t: float
    welch_p: float
    welch_df: float
    cohens_d: float
    auroc: float
    alpha: float = SIGNIFICANCE

    @property
    def significant(self) -> bool:
        return math.isfinite(self.welch_p) and self.welch_p < self.alpha

    def summary(self) -> str:
        verdict = f"{'significant' if self.significant else 'not significant'} at alpha = {self.alpha:g}"
        return (
            f"Welch t = {self.welch_t:.3g} (df {self.welch_df:.1f}), one-sided p = {self.welch_p:.3g}  "
            f"[{verdict}; steps treated as independent]\n"
            f"Cohen's d = {self.cohens_d:.3g}    AUROC = {self.auroc:.3f}\n"
            f"mean gate: {self.mean_transition:.3f} at {self.n_transition} transition steps, "
            f"{self.mean_stable:.3f} at {self.n_stable} stable steps"
        )


def gate_transition_statistics(
    gate_activations: Any, transition_mask: Any, alpha: float = SIGNIFICANCE
) -> GateTransitionStatistics:
    """One-sided Welch t-test, Cohen's d and AUROC of the gate as a detector of transition steps."""
    gate = as_series(gate_activations, "gate_activations")
    transition = as_series(transition_mask, "transition_mask", len(gate), bool)
    inside, outside = gate[transition], gate[~transition]
    if len(inside) < 2 or len(outside) < 2:
        raise ValueError(
            f"transition_mask marks {len(inside)} transition and {len(outside)} stable steps; "
            "the statistics need at least 2 of each."
        )
    # A constant gate (gate=fixed or none) has no variance: t, p and d are NaN or infinite, which
    # the summary reports as not significant; scipy's and numpy's warnings about it add nothing.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = stats.ttest_ind(inside, outside, equal_var=False, alternative="greater")
        pooled = math.sqrt(
            ((len(inside) - 1) * inside.var(ddof=1) + (len(outside) - 1) * outside.var(ddof=1))
            / (len(inside) + len(outside) - 2)
        )
        difference = inside.mean() - outside.mean()
        if pooled > 0:
            cohens_d = difference / pooled
        else:
            cohens_d = math.nan if difference == 0 else math.copysign(math.inf, difference)
    return GateTransitionStatistics(
        n_transition=len(inside),
        n_stable=len(outside),
        mean_transition=float(inside.mean()),
        mean_stable=float(outside.mean()),
        welch_t=float(welch.statistic),
        welch_p=float(welch.pvalue),
        welch_df=float(welch.df),
        cohens_d=float(cohens_d),
        auroc=auroc(gate, transition),
        alpha=alpha,
    )
