"""Hamilton filter with IMM mixing for the antipodal process: the near-Bayes-optimal reference.

The process is a jump-Markov linear system. Writing s_t = r_{t-1} for the sign of the dynamics that
produced z_t,
    z_t = s_t A z_{t-1} + eps_t,   x_t = C z_t + eta_t,   P(s_{t+1} != s_t) = p_switch.
Each step the filter keeps, for each mode j, P(s_t = j | x_{0:t}) and a Gaussian for z_t given
s_t = j. Following Hamilton, it weighs every pair (s_{t-1} = i, s_t = j) by its exact one-step
likelihood, which gives the posterior of a switch; it then mixes the pairs back into one Gaussian
per mode by moment matching (the IMM/Kim collapse), so the cost stays 4 Kalman steps per time step.
With p_switch = 0 only the + mode carries weight and the filter is exactly a Kalman filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from models.contract import SequenceModel
from models.registry import register_model

MODES = (1.0, -1.0)


@dataclass(frozen=True)
class FilterResult:
    """Outputs over a trajectory of T observations.

    predictions[t]: E[x_{t+1} | x_{0:t}], the one-step prediction made after seeing x_t.
    switch_probability[t]: P(r_t != r_{t-1} | x_{0:t+1}), the posterior that the regime switched at
        step t, available once x_{t+1} (the first observation the new sign acts on) has arrived;
        0 at t = 0 (r_0 = +1 is known) and at the last step (no x_{T} to see it).
    regime_probability[t]: P(r_{t-1} = +1 | x_{0:t}), the filtered sign of the last transition.
    """

    predictions: np.ndarray
    switch_probability: np.ndarray
    regime_probability: np.ndarray


def _log_gaussian(residual: np.ndarray, covariance: np.ndarray) -> float:
    sign, log_det = np.linalg.slogdet(covariance)
    return -0.5 * (residual @ np.linalg.solve(covariance, residual) + log_det + len(residual) * np.log(2 * np.pi))


def hamilton_imm_filter(
    x: np.ndarray,
    A: np.ndarray,
    C: np.ndarray,
    sigma_epsilon: float,
    sigma_eta: float,
    p_switch: float,
    initial_cov: np.ndarray | None = None,
    initial_plus_probability: float = 1.0,
) -> FilterResult:
    """Run the filter over observations x (T, obs_dim) with the true process parameters.

    The defaults describe the start of a generated trajectory: z_0 ~ N(0, I) and r_0 = +1. A window
    cut from the middle of a trajectory starts from the stationary prior instead
    (`stationary_covariance`, and an unknown sign: initial_plus_probability = 0.5).
    """
    steps, latent = len(x), A.shape[0]
    Q = sigma_epsilon**2 * np.eye(latent)
    R = sigma_eta**2 * np.eye(C.shape[0])
    transition = np.array([[1 - p_switch, p_switch], [p_switch, 1 - p_switch]])

    prior_cov = np.eye(latent) if initial_cov is None else initial_cov
    mean, cov = _kalman_update(np.zeros(latent), prior_cov, x[0], C, R)
    means, covs = [mean, mean], [cov, cov]
    mode_prob = np.array([1.0, 0.0])
    # The first transition uses r_0, whose sign is given by the prior rather than by a transition.
    first_step = np.tile([initial_plus_probability, 1.0 - initial_plus_probability], (2, 1))

    predictions = np.empty_like(x, dtype=float)
    switch_probability = np.zeros(steps)
    regime_probability = np.empty(steps)
    regime_probability[0] = initial_plus_probability
    for t in range(steps):
        pair_weights = mode_prob[:, None] * (first_step if t == 0 else transition)
        predictions[t] = sum(pair_weights[i, j] * MODES[j] * (C @ A @ means[i]) for i in range(2) for j in range(2))
        if t + 1 == steps:
            break
        log_weights = np.full((2, 2), -np.inf)
        pair_means, pair_covs = {}, {}
        for i in range(2):
            for j in range(2):
                if pair_weights[i, j] == 0.0:
                    continue
                prior_mean = MODES[j] * (A @ means[i])
                prior_cov = A @ covs[i] @ A.T + Q
                innovation_cov = C @ prior_cov @ C.T + R
                log_weights[i, j] = np.log(pair_weights[i, j]) + _log_gaussian(
                    x[t + 1] - C @ prior_mean, innovation_cov
                )
                pair_means[i, j], pair_covs[i, j] = _kalman_update(prior_mean, prior_cov, x[t + 1], C, R)
        posterior = np.exp(log_weights - log_weights.max())
        posterior /= posterior.sum()
        # A switch at step t (r_t != r_{t-1}) is s_{t+1} != s_t; at t = 0 there is no r_{-1}.
        if t > 0:
            switch_probability[t] = posterior[0, 1] + posterior[1, 0]
        mode_prob = posterior.sum(axis=0)
        regime_probability[t + 1] = mode_prob[0]
        means, covs = [], []
        for j in range(2):
            sources = [i for i in range(2) if (i, j) in pair_means]
            if mode_prob[j] == 0.0 or not sources:
                means.append(np.zeros(latent))
                covs.append(np.eye(latent))
                continue
            weights = [posterior[i, j] / mode_prob[j] for i in sources]
            mixed_mean = sum(w * pair_means[i, j] for w, i in zip(weights, sources))
            mixed_cov = sum(
                w * (pair_covs[i, j] + np.outer(pair_means[i, j] - mixed_mean, pair_means[i, j] - mixed_mean))
                for w, i in zip(weights, sources)
            )
            means.append(mixed_mean)
            covs.append(mixed_cov)
    return FilterResult(predictions, switch_probability, regime_probability)


def stationary_covariance(A: np.ndarray, sigma_epsilon: float) -> np.ndarray:
    """Sigma = A Sigma A^T + sigma_epsilon^2 I, the latent covariance far from the start (either sign)."""
    return scipy.linalg.solve_discrete_lyapunov(A, sigma_epsilon**2 * np.eye(A.shape[0]))


@register_model("hamilton_imm")
class HamiltonIMMReference(SequenceModel):
    """The filter as a registry model: not trained, evaluated on the same windows as every model.

    It knows the true process (A, C, noise levels, p_switch), and each window starts from the
    stationary prior with an unknown sign, so it is the near-Bayes-optimal predictor given exactly
    the information a trained model gets. Diagnostics: `switch_probability` per step.
    """

    supported_tasks = ("regression",)
    needs_reference_process = True  # build_module passes the DataModule's true process as `process`

    def __init__(self, input_dim: int, output_dim: int, process: dict[str, Any]) -> None:
        super().__init__()
        if output_dim != input_dim:
            raise ValueError(f"output_dim={output_dim} must equal input_dim={input_dim}: the filter predicts x.")
        self.A = np.asarray(process["A"], dtype=float)
        self.C = np.asarray(process["C"], dtype=float)
        if self.C.shape[0] != input_dim:
            raise ValueError(f"process C has {self.C.shape[0]} rows but input_dim={input_dim}.")
        self.sigma_epsilon, self.sigma_eta = float(process["sigma_epsilon"]), float(process["sigma_eta"])
        self.p_switch = float(process["p_switch"])
        self.prior_cov = stationary_covariance(self.A, self.sigma_epsilon)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        """x: (B, T, obs) -> E[x_{t+1} | window up to t], (B, T, obs)."""
        results = [
            hamilton_imm_filter(
                window,
                self.A,
                self.C,
                self.sigma_epsilon,
                self.sigma_eta,
                self.p_switch,
                initial_cov=self.prior_cov,
                initial_plus_probability=0.5,
            )
            for window in x.detach().double().cpu().numpy()
        ]
        predictions = torch.as_tensor(np.stack([r.predictions for r in results]), dtype=x.dtype, device=x.device)
        if not return_diagnostics:
            return predictions
        switch = torch.as_tensor(np.stack([r.switch_probability for r in results]), dtype=x.dtype, device=x.device)
        return predictions, {"switch_probability": switch}


def _kalman_update(mean: np.ndarray, cov: np.ndarray, observation: np.ndarray, C: np.ndarray, R: np.ndarray):
    innovation_cov = C @ cov @ C.T + R
    gain = np.linalg.solve(innovation_cov, C @ cov).T
    new_mean = mean + gain @ (observation - C @ mean)
    identity_minus = np.eye(len(mean)) - gain @ C
    # Joseph form keeps the covariance symmetric positive definite over thousands of steps.
    return new_mean, identity_minus @ cov @ identity_minus.T + gain @ R @ gain.T


def kalman_filter_predictions(x: np.ndarray, A: np.ndarray, C: np.ndarray, sigma_epsilon: float, sigma_eta: float):
    """Plain Kalman filter for z_t = A z_{t-1} + eps: E[x_{t+1} | x_{0:t}] for every t (reference)."""
    latent = A.shape[0]
    Q, R = sigma_epsilon**2 * np.eye(latent), sigma_eta**2 * np.eye(C.shape[0])
    mean, cov = _kalman_update(np.zeros(latent), np.eye(latent), x[0], C, R)
    predictions = np.empty_like(x, dtype=float)
    for t in range(len(x)):
        predictions[t] = C @ A @ mean
        if t + 1 < len(x):
            mean, cov = _kalman_update(A @ mean, A @ cov @ A.T + Q, x[t + 1], C, R)
    return predictions
