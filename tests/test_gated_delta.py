"""z2_delta: the parallel scan and the reference loop agree, and the model is exactly Z2-equivariant."""

from __future__ import annotations

import pytest
import torch

from models import build_model


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


@pytest.mark.parametrize("num_layers, steps", [(1, 1), (1, 37), (2, 130)])
def test_parallel_scan_and_reference_loop_give_same_outputs_and_gradients(num_layers, steps, delta_path):
    kwargs = dict(input_dim=4, output_dim=3, hidden_dim=16, delta_rank=4, num_layers=num_layers, temperature=0.5)
    fast = _randomised(build_model("z2_delta", use_parallel_scan=True, **kwargs), seed=0)
    loop = build_model("z2_delta", use_parallel_scan=False, **kwargs)
    loop.load_state_dict(fast.state_dict())
    x = torch.randn(3, steps, 4, generator=torch.Generator().manual_seed(1))
    out_fast, out_loop = fast(x), loop(x)
    torch.testing.assert_close(out_fast, out_loop, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(out_fast.shape, generator=torch.Generator().manual_seed(2))
    (out_fast * upstream).sum().backward()
    (out_loop * upstream).sum().backward()
    # float32 against the float64 loop: relative to each gradient's norm (single entries of a
    # gradient can be sums that cancel to far below its norm, where elementwise rtol is noise).
    for (name, p_fast), p_loop in zip(fast.named_parameters(), loop.parameters()):
        error = (p_fast.grad - p_loop.grad).norm() / p_loop.grad.norm()
        assert error <= 1e-5, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("num_layers, seam", [(1, True), (3, True), (2, False)])
def test_z2_delta_is_exactly_equivariant(num_layers, seam, delta_path):
    model = _randomised(
        build_model(
            "z2_delta",
            input_dim=4,
            output_dim=4,
            hidden_dim=16,
            delta_rank=3,
            num_layers=num_layers,
            temperature=0.5,
            seam=seam,
        ),
        seed=2,
    ).double()
    x = torch.randn(4, 60, 4, dtype=torch.float64)
    out, diag = model(x, return_diagnostics=True)
    out_flipped, diag_flipped = model(-x, return_diagnostics=True)
    torch.testing.assert_close(out_flipped, -out, rtol=0, atol=1e-12)
    for key in ("gate", "parity_energy", "update_gate"):
        torch.testing.assert_close(diag_flipped[key], diag[key], rtol=0, atol=1e-12)
    assert out.abs().mean() > 1e-3 and diag["update_gate"].std() > 1e-3
    assert diag["gate"].std() > 1e-3 if seam else torch.all(diag["gate"] == 0)


def test_open_seam_gate_flips_the_odd_state_by_the_delta_rule():
    # With s = 1 the chart flip folded into the decay makes a_t = -(1 - beta_t) negative:
    # h_odd,t = -(1 - beta_t) h_odd,{t-1} + beta_t W u_t, checked against a hand-written loop.
    torch.manual_seed(3)
    unit = build_model("z2_delta", input_dim=2, output_dim=2, hidden_dim=8, delta_rank=2).blocks[0].unit
    with torch.no_grad():
        unit.from_invariants.bias[0] = 10.0
    u = torch.randn(2, 6, 4)
    h_odd, _, diagnostics, _ = unit(u)
    assert torch.all(diagnostics["gate"] > 1 - 1e-6)
    beta = unit.gates(unit.invariants(u))[1][..., :4]
    expected, state = [], torch.zeros(2, 4)
    for t in range(6):
        state = -(1 - beta[:, t]) * state + beta[:, t] * unit.odd_input(u[:, t])
        expected.append(state)
    torch.testing.assert_close(h_odd, torch.stack(expected, dim=1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_dim": 5}, "hidden_dim=5 is not allowed"),
        ({"delta_rank": 0}, "delta_rank=0 must be >= 1"),
        ({"temperature": -1.0}, "temperature=-1.0 must be > 0"),
        ({"seam_gate_init": 1.0}, "seam_gate_init=1.0 must lie strictly between 0 and 1"),
    ],
)
def test_z2_delta_rejects_impossible_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("z2_delta", input_dim=4, output_dim=4, **kwargs)


def test_without_the_seam_the_decay_stays_between_0_and_1():
    # seam=False: h_odd,t = (1 - beta_t) h_odd,{t-1} + beta_t W u_t, checked against a hand-written
    # loop; the seam score is not built, so it is not counted among the parameters either.
    torch.manual_seed(5)
    with_seam = build_model("z2_delta", input_dim=2, output_dim=2, hidden_dim=8, delta_rank=2)
    model = build_model("z2_delta", input_dim=2, output_dim=2, hidden_dim=8, delta_rank=2, seam=False)
    unit = model.blocks[0].unit
    u = torch.randn(2, 9, 4)
    h_odd, _, diagnostics, _ = unit(u)
    assert torch.all(diagnostics["gate"] == 0)
    beta = unit.gates(unit.invariants(u))[1][..., :4]
    expected, state = [], torch.zeros(2, 4)
    for t in range(9):
        state = (1 - beta[:, t]) * state + beta[:, t] * unit.odd_input(u[:, t])
        expected.append(state)
    torch.testing.assert_close(h_odd, torch.stack(expected, dim=1), rtol=1e-4, atol=1e-6)
    with_seam_count, count = (sum(p.numel() for p in m.parameters()) for m in (with_seam, model))
    assert with_seam_count - count == unit.from_invariants.in_features + 1


def test_seam_switch_is_a_config_key(make_config):
    from hydra.utils import instantiate

    from train_hydra import build_module

    for overrides, seam in ((["model=z2_delta"], True), (["model=z2_delta", "model.seam=false"], False)):
        cfg = make_config([*overrides, "data.generator.T=300"])
        module = build_module(cfg, instantiate(cfg.data))
        assert all(block.unit.seam is seam for block in module.model.blocks)


@pytest.mark.parametrize("overrides", [[], ["data.generator.sigma_epsilon=0.3"], ["model.num_layers=2"]])
def test_no_gate_of_z2_delta_starts_saturated_on_antipodal_data(make_config, overrides):
    # The invariants are scaled by the stream width: unscaled, 67 % of the gate sigmoid inputs
    # (|z| > 4) and 79 % of the candidate tanh inputs (|z| > 2) were saturated at initialisation.
    from hydra.utils import instantiate

    from audit.initialization import InitializationAuditor
    from train_hydra import build_module

    cfg = make_config(["model=z2_delta", "data.generator.T=600", *overrides])
    torch.manual_seed(0)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = build_module(cfg, datamodule).model
    report = InitializationAuditor(model, next(iter(datamodule.train_dataloader()))).check_initialization()
    unit_gates = [gate for gate in report.gates if ".unit " in gate.site]
    assert {gate.function for gate in unit_gates} == {"sigmoid", "tanh"}
    # Measured: at most 0.2 % in the first block; 4.7 % of the second block's candidate tanh inputs.
    assert max(gate.saturated_fraction for gate in unit_gates) < 0.06, [
        (gate.site, gate.function, gate.saturated_fraction) for gate in unit_gates
    ]
