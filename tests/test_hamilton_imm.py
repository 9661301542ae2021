"""The Hamilton/IMM reference filter: Kalman equivalence, switch detection and the MSE floor."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional import auroc

from data.antipodal import AntipodalProcessConfig, generate_antipodal
from models.hamilton_imm import hamilton_imm_filter, kalman_filter_predictions


def run_filter(config: AntipodalProcessConfig):
    sequence = generate_antipodal(config)
    result = hamilton_imm_filter(
        sequence.x, sequence.A, sequence.C, config.sigma_epsilon, config.sigma_eta, config.p_switch
    )
    return sequence, result


def test_without_switches_the_filter_is_a_kalman_filter():
    config = AntipodalProcessConfig(T=1500, p_switch=0.0, seed=1)
    sequence, result = run_filter(config)
    kalman = kalman_filter_predictions(sequence.x, sequence.A, sequence.C, config.sigma_epsilon, config.sigma_eta)
    np.testing.assert_allclose(result.predictions, kalman, rtol=0, atol=1e-6)
    assert np.all(result.switch_probability == 0) and np.all(result.regime_probability == 1)


def test_switch_posterior_detects_planted_switches_at_high_snr():
    sequence, result = run_filter(AntipodalProcessConfig(T=4000, sigma_epsilon=0.3, seed=2))
    switched = np.zeros(len(sequence.x), dtype=int)
    switched[sequence.switch_steps] = 1
    score = auroc(torch.tensor(result.switch_probability), torch.tensor(switched), task="binary").item()
    assert score >= 0.95
    # The filtered sign of the dynamics follows the true regime almost everywhere.
    agreement = ((result.regime_probability[1:] > 0.5) == (sequence.regime[:-1] > 0)).mean()
    assert agreement > 0.95


def test_filter_beats_the_zero_predictor_and_knowing_the_sign_helps():
    config = AntipodalProcessConfig(T=6000, seed=3)
    sequence, result = run_filter(config)
    mse = ((result.predictions[:-1] - sequence.x[1:]) ** 2).mean()
    zero = (sequence.x[1:] ** 2).mean()
    # A Kalman filter that ignores the switches (always +A) must do worse than the switching filter.
    blind = kalman_filter_predictions(sequence.x, sequence.A, sequence.C, config.sigma_epsilon, config.sigma_eta)
    blind_mse = ((blind[:-1] - sequence.x[1:]) ** 2).mean()
    assert np.isfinite(mse) and mse < 0.95 * zero and mse < blind_mse
    assert np.all((result.switch_probability >= 0) & (result.switch_probability <= 1))
