"""The positive control: z2_delta with its seam learns running parity on short sequences and is
right on much longer ones; with the seam off (decay in (0, 1)) it stays at chance."""

from __future__ import annotations

import pytest
import torch

from data.parity import running_parity
from models import build_model

TRAIN_LENGTH = 16


def trained_on_parity(seam: bool, steps: int, seed: int = 0) -> torch.nn.Module:
    """A small z2_delta trained with AdamW on random 16-bit sequences (per-step parity targets)."""
    torch.manual_seed(seed)
    # The settings of experiment=parity_control (configs/experiment/parity_control.yaml).
    model = build_model(
        "z2_delta",
        vocab_size=2,
        output_dim=2,
        hidden_dim=16,
        delta_rank=4,
        seam=seam,
        seam_gate_init=0.5,
        temperature=1.0,
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        bits = torch.randint(0, 2, (64, TRAIN_LENGTH), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(bits).reshape(-1, 2), running_parity(bits).reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def accuracy_at(model: torch.nn.Module, length: int) -> float:
    bits = torch.randint(0, 2, (256, length), generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        return (model(bits).argmax(-1) == running_parity(bits)).float().mean().item()


def test_seam_model_generalises_parity_and_the_seam_off_model_does_not():
    seam_on, seam_off = trained_on_parity(seam=True, steps=200), trained_on_parity(seam=False, steps=200)
    assert accuracy_at(seam_on, 4 * TRAIN_LENGTH) >= 0.95
    assert accuracy_at(seam_off, 4 * TRAIN_LENGTH) < 0.6


@pytest.mark.slow  # two full experiment=parity_control runs, about a minute each on a busy 2-core CPU
def test_parity_control_experiment_through_the_composed_config(tmp_path):
    from train_hydra import compose_config, train

    results = {}
    for seam in (True, False):
        cfg = compose_config(
            ["experiment=parity_control", f"model.seam={str(seam).lower()}", "logger=none"], tmp_path / f"seam_{seam}"
        )
        results[seam] = train(cfg)["metrics"]
    assert results[True]["val/accuracy"] >= 0.95  # 4x the training length
    assert results[True]["test/accuracy"] >= 0.99  # 16x
    assert results[False]["val/accuracy"] < 0.6 and results[False]["test/accuracy"] < 0.55
