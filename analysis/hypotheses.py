"""The seam hypotheses H1-H4 and the seed paper's P1-P3, on plain arrays (docs/seam_experiment.md).

Alignment. A switch at s (r_s != r_{s-1}) first changes x_{s+1}, because z_{s+1} = r_s A z_s. The
sign of the dynamics that produced step t is therefore d_t = r_{t-1}, and a model that has read x_t
can at best know d_t. Step-level series below are indexed by t (the last step the model has read):
`negative[t] = (d_t == -1)`, the filter's `filter_negative[t] = P(d_t = -1 | x_{0:t})` (the
Hamilton filter's regime posterior), `transition[t]` the observable window s+1 <= t <= s+w.
Target-level series (H3, P3) are indexed by the target step, flagged by the same window.

Every p-value and interval comes from `analysis.statistics.block_bootstrap` (resampled within each
trajectory: `groups`); H2 resamples switch events, which are separated by ~1/p_switch steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from analysis.statistics import (
    BootstrapResult,
    auroc,
    block_bootstrap,
    holm,
    mean_difference,
    pearson,
)

HYSTERESIS = np.round(np.arange(0.0, 0.5, 0.05), 2)  # H2: Schmitt-trigger half widths around 0.5
FALSE_ALARMS_PER_1000 = 10.0  # H2 operating point: the expected delay at <= this many false alarms per 1000 steps


def result_dict(result: BootstrapResult) -> dict[str, float]:
    return asdict(result)


# ----------------------------------------------------------------------------------------------- H1


def h1_regime_tracking(
    score: np.ndarray,
    negative: np.ndarray,
    filter_negative: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> dict:
    """AUROC of a gate (or probe probability) against d_t = -1, and its correlation with the filter's posterior.

    The seam gate enters as (1 - 2 g), and (W, g) -> (-W, 1 - g) is the same model, so a gate may
    track d_t = -1 by being high or by being low. `auroc` keeps its sign (null 0.5, two-sided);
    `tracking_auroc` = max(auroc, 1 - auroc) is how well it tracks either way.
    """
    negative = np.asarray(negative, dtype=bool)
    area = block_bootstrap(lambda s, n: auroc(s, n), [score, negative], null=0.5, groups=groups, seed=seed)
    out = {
        "auroc": result_dict(area),
        "tracking_auroc": max(area.estimate, 1 - area.estimate),
        "polarity": "high at d=-1" if area.estimate >= 0.5 else "low at d=-1",
        "p_value": area.p_value,
    }
    if filter_negative is not None:
        out["filter_correlation"] = result_dict(
            block_bootstrap(pearson, [score, filter_negative], groups=groups, seed=seed + 1)
        )
        out["filter_auroc"] = auroc(filter_negative, negative)
    return out


def fit_logistic_probe(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2, iterations: int = 50):
    """Logistic regression by Newton's method on standardised features; returns a function of new features.

    For models without a gate: the probe reads the hidden state (fitted on the train split, scored on
    test), so H1 asks every model the same question: is the sign of the dynamics readable from the state?
    """
    features = np.asarray(features, dtype=float)
    mean, std = features.mean(0), features.std(0) + 1e-8
    design = np.hstack([(features - mean) / std, np.ones((len(features), 1))])
    y = np.asarray(labels, dtype=float)
    weights = np.zeros(design.shape[1])
    penalty = l2 * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # no shrinkage of the intercept
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (p - y) + penalty @ weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break

    def probability(new_features: np.ndarray) -> np.ndarray:
        standardised = (np.asarray(new_features, dtype=float) - mean) / std
        return 1.0 / (1.0 + np.exp(-(standardised @ weights[:-1] + weights[-1])))

    return probability


# ----------------------------------------------------------------------------------------------- H2


@dataclass(frozen=True)
class DetectionPoint:
    hysteresis: float
    false_alarms_per_1000: float
    detection_rate: float
    mean_delay: float  # over all switches, a missed one counting max_delay


def _scaled(score: np.ndarray) -> np.ndarray:
    """Scores mapped to [0, 1] by their 1st and 99th percentiles (gates need not span [0, 1])."""
    low, high = np.quantile(score, [0.01, 0.99])
    return np.clip((score - low) / (high - low), 0.0, 1.0) if high > low else np.full(len(score), 0.5)


def switch_events(score: np.ndarray, negative: np.ndarray, hysteresis: float, max_delay: int):
    """Alarms of a Schmitt trigger on one trajectory, matched to the true changes of d_t.

    The implied regime is 'negative' once the scaled score exceeds 0.5 + h and 'positive' once it falls
    below 0.5 - h; each flip is an alarm. A change of d at step c = s + 1 is detected by the first alarm
    to the new sign in c .. c + max_delay - 1, with delay t - c; every other alarm is false.
    Returns (delays per change (max_delay when missed), detected flags, false alarm count).
    """
    scaled = _scaled(score)
    state = scaled[0] > 0.5
    alarms = []
    for t in range(1, len(scaled)):
        if not state and scaled[t] > 0.5 + hysteresis:
            state = True
            alarms.append((t, True))
        elif state and scaled[t] < 0.5 - hysteresis:
            state = False
            alarms.append((t, False))
    changes = np.flatnonzero(negative[1:] != negative[:-1]) + 1
    used, delays, detected = set(), [], []
    for change in changes:
        hit = next(
            (
                i
                for i, (t, to_negative) in enumerate(alarms)
                if change <= t < change + max_delay and to_negative == bool(negative[change]) and i not in used
            ),
            None,
        )
        if hit is None:
            delays.append(max_delay)
            detected.append(False)
        else:
            used.add(hit)
            delays.append(alarms[hit][0] - change)
            detected.append(True)
    return np.array(delays, dtype=float), np.array(detected, dtype=bool), len(alarms) - len(used)


def h2_switch_detection(
    score: np.ndarray, negative: np.ndarray, groups: np.ndarray | None = None, max_delay: int = 10, seed: int = 0
) -> dict:
    """Detection curve (false alarms per 1000 steps vs expected delay) and the delay at the operating point.

    `score` must be high for d = -1 (flip a gate with H1 polarity 'low at d=-1' first). The operating
    point is the narrowest hysteresis with at most FALSE_ALARMS_PER_1000 false alarms (the widest if
    none qualifies). p_value: one-sided bootstrap over switch events that the detection rate exceeds
    that of alarms at random times at the same alarm rate.
    """
    groups = np.zeros(len(score), dtype=int) if groups is None else np.asarray(groups)
    curve, events = [], {}
    for h in HYSTERESIS:
        delays, detected, false_alarms = [], [], 0
        for value in np.unique(groups):
            members = groups == value
            d, hit, fa = switch_events(np.asarray(score)[members], np.asarray(negative)[members], float(h), max_delay)
            delays.append(d)
            detected.append(hit)
            false_alarms += fa
        delays, detected = np.concatenate(delays), np.concatenate(detected)
        events[float(h)] = (delays, detected, false_alarms)
        curve.append(
            DetectionPoint(
                float(h),
                1000.0 * false_alarms / len(score),
                float(detected.mean()) if len(detected) else math.nan,
                float(delays.mean()) if len(delays) else math.nan,
            )
        )
    qualifying = [p for p in curve if p.false_alarms_per_1000 <= FALSE_ALARMS_PER_1000]
    point = qualifying[0] if qualifying else curve[-1]
    delays, detected, false_alarms = events[point.hysteresis]
    if len(detected) < 2:
        return {"curve": [asdict(p) for p in curve], "operating_point": asdict(point), "p_value": math.nan}
    alarm_rate = (false_alarms + detected.sum()) / len(score)
    chance = 1 - (1 - min(alarm_rate, 1.0)) ** max_delay
    rate = block_bootstrap(
        np.mean, [detected.astype(float)], null=chance, alternative="greater", block_length=1, seed=seed
    )
    delay = block_bootstrap(np.mean, [delays], block_length=1, seed=seed + 1)
    return {
        "curve": [asdict(p) for p in curve],
        "operating_point": asdict(point),
        "chance_detection_rate": chance,
        "detection_rate": result_dict(rate),
        "mean_delay": result_dict(delay),
        "p_value": rate.p_value,
    }


# ------------------------------------------------------------------------------------------- H3, H4


def h3_boundary_gain(gap: np.ndarray, transition: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> dict:
    """mean(gap | transition) - mean(gap | stable), gap = model's squared error - filter's, per target.

    Below 0: the model loses less to the filter where switches happen than elsewhere (one-sided).
    """
    result = block_bootstrap(
        mean_difference, [gap, np.asarray(transition, dtype=bool)], alternative="less", groups=groups, seed=seed
    )
    return {
        "difference": result_dict(result),
        "p_value": result.p_value,
        "gap_transition": float(np.mean(gap[transition])) if np.any(transition) else math.nan,
        "gap_stable": float(np.mean(gap[~np.asarray(transition, dtype=bool)])),
    }


def h4_parity_energy(
    energy: np.ndarray, negative: np.ndarray, transition: np.ndarray, groups: np.ndarray | None = None, seed: int = 0
) -> dict:
    """Parity energy in each regime (d = +1, d = -1) and around switches (observable window vs stable).

    p_value (the one in the Holm family): two-sided test that the level around switches differs from
    the stable level; the regime difference is reported with its own interval and p.
    """
    negative, transition = np.asarray(negative, dtype=bool), np.asarray(transition, dtype=bool)
    regime = block_bootstrap(mean_difference, [energy, negative], groups=groups, seed=seed)
    switch = block_bootstrap(mean_difference, [energy, transition], groups=groups, seed=seed + 1)
    return {
        "mean_positive": float(energy[~negative].mean()) if (~negative).any() else math.nan,
        "mean_negative": float(energy[negative].mean()) if negative.any() else math.nan,
        "mean_transition": float(energy[transition].mean()) if transition.any() else math.nan,
        "mean_stable": float(energy[~transition].mean()) if (~transition).any() else math.nan,
        "negative_minus_positive": result_dict(regime),
        "transition_minus_stable": result_dict(switch),
        "p_value": switch.p_value,
    }


# ------------------------------------------------------------------------------------- P1-P3 (paper)


def paper_predictions(
    energy: np.ndarray | None,
    gate: np.ndarray | None,
    symmetric: np.ndarray,
    gap: np.ndarray,
    target_symmetric: np.ndarray,
    groups: np.ndarray | None = None,
    target_groups: np.ndarray | None = None,
    seed: int = 0,
) -> dict:
    """The seed paper's predictions, on its symmetric window s-w .. s+w-1, one-sided:
    P1 parity energy higher in the window; P2 gate higher in the window (AUROC > 0.5);
    P3 gain over the filter larger in the window (gap difference < 0)."""
    symmetric = np.asarray(symmetric, dtype=bool)
    out = {}
    if energy is not None:
        p1 = block_bootstrap(mean_difference, [energy, symmetric], alternative="greater", groups=groups, seed=seed)
        out["P1"] = {"difference": result_dict(p1), "p_value": p1.p_value}
    if gate is not None:
        p2 = block_bootstrap(
            lambda g, m: auroc(g, m), [gate, symmetric], null=0.5, alternative="greater", groups=groups, seed=seed + 1
        )
        out["P2"] = {"auroc": result_dict(p2), "p_value": p2.p_value}
    p3 = block_bootstrap(
        mean_difference,
        [gap, np.asarray(target_symmetric, dtype=bool)],
        alternative="less",
        groups=target_groups,
        seed=seed + 2,
    )
    out["P3"] = {"difference": result_dict(p3), "p_value": p3.p_value}
    return out


def apply_holm(per_model: dict[str, dict[str, dict]]) -> None:
    """Holm over every (model, hypothesis) p-value in place: adds `p_holm` and `significant` (at 0.05)."""
    keys = [
        (model, name)
        for model, tests in per_model.items()
        for name, test in tests.items()
        if isinstance(test, dict) and "p_value" in test
    ]
    adjusted = holm([per_model[m][n]["p_value"] for m, n in keys])
    for (model, name), p in zip(keys, adjusted):
        per_model[model][name]["p_holm"] = float(p)
        per_model[model][name]["significant"] = bool(np.isfinite(p) and p < 0.05)
