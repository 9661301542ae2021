"""The statistics of the seam experiment: block bootstrap coverage, Holm, and H1-H4 on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.hypotheses import (
    apply_holm,
    fit_logistic_probe,
    h1_regime_tracking,
    h2_switch_detection,
    h3_boundary_gain,
)
from analysis.statistics import auroc, block_bootstrap, choose_block_length, holm
from data.antipodal import transition_mask


def ar1(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(size=n)
    series = np.empty(n)
    series[0] = noise[0] / np.sqrt(1 - phi**2)
    for t in range(1, n):
        series[t] = phi * series[t - 1] + noise[t]
    return series


def test_block_bootstrap_covers_the_mean_of_an_ar1_series_where_the_iid_bootstrap_does_not():
    rng = np.random.default_rng(0)
    covered = {"block": 0, "iid": 0}
    trials = 150
    for trial in range(trials):
        series = ar1(600, 0.6, rng)  # true mean 0
        block = block_bootstrap(np.mean, [series], resamples=300, seed=trial)
        iid = block_bootstrap(np.mean, [series], resamples=300, block_length=1, seed=trial)
        covered["block"] += block.ci_low <= 0 <= block.ci_high
        covered["iid"] += iid.ci_low <= 0 <= iid.ci_high
    assert covered["block"] / trials >= 0.85  # nominal 0.95; block bootstraps run slightly narrow
    assert covered["iid"] / trials <= 0.70  # steps treated as independent: far too narrow


def test_block_length_rule_follows_the_autocorrelation():
    rng = np.random.default_rng(1)
    assert choose_block_length(rng.normal(size=1000)) == 10  # ceil(1000^(1/3)) for white noise
    regime = np.where(np.cumsum(rng.random(1000) < 0.05) % 2 == 0, 1.0, -1.0)  # autocorrelation 0.9^k
    assert 14 <= choose_block_length(regime) <= 30


def test_holm_matches_a_hand_computed_example():
    # sorted p: 0.01, 0.02, 0.03, 0.04 with m = 4 -> 0.04, 0.06, 0.06 (monotone), 0.06; NaN is left out.
    adjusted = holm([0.03, 0.01, np.nan, 0.04, 0.02])
    np.testing.assert_allclose(adjusted[[1, 4, 0, 3]], [0.04, 0.06, 0.06, 0.06])
    assert np.isnan(adjusted[2])
    assert holm([0.5, 0.9])[1] == 1.0  # capped


def planted_regimes(rng: np.random.Generator, n: int = 3000) -> np.ndarray:
    regime = np.where(np.cumsum(rng.random(n) < 0.05) % 2 == 0, 1, -1)
    regime[0] = 1
    return regime


def test_h1_finds_a_planted_regime_gate_and_not_an_independent_one():
    rng = np.random.default_rng(2)
    negative = planted_regimes(rng) == -1
    planted = negative + rng.normal(0, 0.3, len(negative))
    independent = planted_regimes(rng) == -1  # a gate that tracks some other regime sequence
    independent = independent + rng.normal(0, 0.3, len(negative))
    results = {
        "planted": {"H1": h1_regime_tracking(planted, negative)},
        "independent": {"H1": h1_regime_tracking(independent, negative)},
    }
    apply_holm(results)
    assert results["planted"]["H1"]["auroc"]["estimate"] > 0.95 and results["planted"]["H1"]["significant"]
    assert abs(results["independent"]["H1"]["auroc"]["estimate"] - 0.5) < 0.1
    assert not results["independent"]["H1"]["significant"]
    # An inverted planted gate tracks just as well, with the other polarity.
    inverted = h1_regime_tracking(-planted, negative)
    assert inverted["tracking_auroc"] > 0.95 and inverted["polarity"] == "low at d=-1"


def test_h2_a_sharp_detector_is_faster_and_better_than_chance_than_a_noisy_one():
    rng = np.random.default_rng(3)
    negative = planted_regimes(rng) == -1
    sharp = h2_switch_detection(negative + rng.normal(0, 0.1, len(negative)), negative)
    noisy = h2_switch_detection(negative + rng.normal(0, 2.0, len(negative)), negative)
    assert sharp["operating_point"]["mean_delay"] < 0.5 and sharp["p_value"] < 0.01
    assert noisy["operating_point"]["mean_delay"] > sharp["operating_point"]["mean_delay"] + 2


def test_h3_sees_a_planted_boundary_gain_and_no_gain_in_noise():
    rng = np.random.default_rng(4)
    transition = transition_mask(planted_regimes(rng), 5)
    noise = rng.normal(0, 1, len(transition))
    assert h3_boundary_gain(noise - 1.0 * transition, transition)["p_value"] < 0.01
    assert h3_boundary_gain(noise, transition)["p_value"] > 0.05


def test_logistic_probe_reads_a_linearly_encoded_sign():
    rng = np.random.default_rng(5)
    negative = planted_regimes(rng, 2000) == -1
    states = rng.normal(size=(2000, 8))
    states[:, 3] += 2.0 * negative
    probe = fit_logistic_probe(states[:1000], negative[:1000])
    assert auroc(probe(states[1000:]), negative[1000:]) > 0.9
    assert probe(states).shape == (2000,)


def test_auroc_counts_ties_as_half():
    assert auroc(np.array([1.0, 1.0, 0.0]), np.array([True, False, False])) == pytest.approx(0.75)
