"""Adaptive gradient clipping: a planted spike is cut to the percentile of the earlier norms, ordinary
steps pass untouched, and the callback runs and checkpoints its history through the composed config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from audit.gradient_clipping import AdaptiveGradientClipping, GradientNormHistory
from train_hydra import train


def set_gradient(parameter: torch.nn.Parameter, norm: float, generator: torch.Generator) -> torch.Tensor:
    direction = torch.randn(parameter.shape, generator=generator)
    parameter.grad = direction / direction.norm() * norm
    return parameter.grad.clone()


def test_a_planted_spike_is_clipped_to_the_percentile_and_normal_steps_are_untouched():
    parameter = torch.nn.Parameter(torch.zeros(50))
    generator = torch.Generator().manual_seed(0)
    history = GradientNormHistory(percentile=90, history=30, min_history=10)
    norms = 1.0 + 0.2 * torch.rand(40, generator=generator)
    for step, norm in enumerate(norms[:25]):
        before = set_gradient(parameter, float(norm), generator)
        history.clip([parameter])
        # A step is untouched unless it lies above the 90th percentile of the norms before it
        # (about one ordinary step in ten, clipped by a few percent).
        threshold = np.percentile(norms[:step].numpy(), 90) if step >= 10 else np.inf
        if norm <= threshold:
            torch.testing.assert_close(parameter.grad, before, rtol=0, atol=0)
        else:
            assert parameter.grad.norm().item() == pytest.approx(threshold, rel=1e-5)

    expected = float(np.percentile(norms[:25].numpy(), 90))  # numpy's linear interpolation, as torch.quantile
    spike = set_gradient(parameter, 1000.0, generator)
    norm, threshold = history.clip([parameter])
    assert norm == pytest.approx(1000.0) and threshold == pytest.approx(expected)
    assert parameter.grad.norm().item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(parameter.grad / parameter.grad.norm(), spike / spike.norm())  # direction kept

    # The spike entered the history unclipped, yet one large norm barely moves the 90th percentile:
    # the next ordinary step is untouched.
    before = set_gradient(parameter, 1.0, generator)
    history.clip([parameter])
    torch.testing.assert_close(parameter.grad, before, rtol=0, atol=0)


def test_no_clipping_before_min_history_and_non_finite_norms_are_not_recorded():
    parameter = torch.nn.Parameter(torch.zeros(4))
    generator = torch.Generator().manual_seed(1)
    history = GradientNormHistory(percentile=50, history=10, min_history=3)
    for norm in (1.0, 1.0):
        set_gradient(parameter, norm, generator)
        history.clip([parameter])
    spike = set_gradient(parameter, 100.0, generator)
    assert history.clip([parameter])[1] is None
    torch.testing.assert_close(parameter.grad, spike, rtol=0, atol=0)  # only 2 norms known: no threshold yet
    parameter.grad = torch.full((4,), float("nan"))
    history.clip([parameter])
    assert len(history.norms) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"percentile": 0}, "percentile=0 must lie in (0, 100]"),
        ({"history": 0}, "history=0 must be >= 1"),
        ({"history": 5, "min_history": 6}, "min_history=6 must lie in [1, history=5]"),
    ],
)
def test_bad_arguments_fail_in_one_sentence(kwargs, message):
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        GradientNormHistory(**kwargs)


def test_the_callback_clips_during_training_and_its_history_is_checkpointed(make_config, tmp_path):
    cfg = make_config(
        [
            "callbacks=[default,adaptive_gradient_clip]",
            "callbacks.adaptive_gradient_clip.percentile=50",
            "callbacks.adaptive_gradient_clip.min_history=2",
            "trainer.gradient_clip_val=null",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=12",
            "trainer.limit_val_batches=2",
            "trainer.log_every_n_steps=1",
            "data.generator.T=2000",
            "model=gru",
            "model.hidden_dim=8",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
            "test=false",
        ]
    )
    train(cfg)
    logged = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    clipped = logged["train/grad_clipped"].dropna()
    # Logged from the step where 2 norms are known; the median of the history clips some steps, not all.
    assert len(clipped) == 10 and 0 < clipped.sum() < 10
    assert (logged["train/grad_clip_threshold"].dropna() > 0).all()
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [value for key, value in checkpoint["callbacks"].items() if "AdaptiveGradientClipping" in key]
    assert len(state["norms"]) == 12 and all(norm > 0 for norm in state["norms"])
    resumed = AdaptiveGradientClipping(percentile=50, history=100, min_history=2)
    resumed.load_state_dict(state)
    assert list(resumed.norms.norms) == state["norms"]
