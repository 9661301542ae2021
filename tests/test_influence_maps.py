"""Influence maps: z2_delta's exact map against autograd Jacobians of its linear recurrence and against
what its forward really scans, the gradient map against a full Jacobian and causality, attention
weights that reproduce the attention output, and the maps through the callback and post hoc."""

from __future__ import annotations

import pytest
import torch
from conftest import train_like_the_cli

import models.gated_delta
from models import build_model
from models.scan import linear_scan_reference
from train_hydra import compose_config, train
from visualization.gate_heatmaps import main as gate_heatmaps_main
from visualization.influence_maps import (
    attention_maps,
    delta_influence,
    gradient_influence,
    influence_maps,
    products_of_decays,
)
from visualization.influence_maps import (
    main as influence_main,
)

T = 7


def test_products_of_decays_are_the_jacobian_of_the_linear_recurrence():
    generator = torch.Generator().manual_seed(0)
    decays = torch.rand(T, 3, generator=generator, dtype=torch.float64) * 2 - 1  # negative decays too
    drive = torch.randn(T, 3, generator=generator, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda b: linear_scan_reference(decays[None], b[None])[0], drive)
    products = products_of_decays(decays)  # (t, s, c)
    for c in range(3):
        torch.testing.assert_close(jacobian[:, c, :, c], products[:, :, c])
    others = jacobian.clone()
    for c in range(3):
        others[:, c, :, c] = 0
    assert others.abs().max() == 0  # channels do not mix
    assert products[torch.triu_indices(T, T, 1)[0], torch.triu_indices(T, T, 1)[1]].abs().max() == 0


def test_delta_influence_reads_exactly_the_decays_its_forward_scans(monkeypatch):
    torch.manual_seed(0)
    model = build_model(
        "z2_delta", input_dim=4, output_dim=4, hidden_dim=16, delta_rank=2, num_layers=2, use_parallel_scan=False
    ).double()
    x = torch.randn(2, T, 4, dtype=torch.float64)
    scanned = []
    original = models.gated_delta.linear_scan_reference
    monkeypatch.setattr(
        models.gated_delta, "linear_scan_reference", lambda a, b, *rest: scanned.append((a, b)) or original(a, b, *rest)
    )
    maps = delta_influence(model, x)
    odd_decay, odd_drive = scanned[0]  # the first block's odd scan comes first
    products = products_of_decays(odd_decay)
    torch.testing.assert_close(maps["influence"], products.abs().mean(-1).float())
    torch.testing.assert_close(maps["signed_influence"], products.mean(-1).float())
    # The map's products rebuild the first block's odd state from its drives: h_t = sum_s P(t, s) b_s.
    torch.testing.assert_close(torch.einsum("btsc,bsc->btc", products, odd_drive), original(odd_decay, odd_drive))
    assert maps["influence"].shape == (2, T, T)
    assert torch.allclose(maps["influence"].diagonal(dim1=1, dim2=2), torch.ones(2, T))
    assert maps["influence"].triu(1).abs().max() == 0


@pytest.mark.parametrize(
    "name, kwargs", [("gru", {"hidden_dim": 8}), ("z2_seam", {"hidden_dim": 8}), ("lstm", {"hidden_dim": 8})]
)
def test_gradient_influence_is_the_jacobian_norm_and_causal(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, input_dim=3, output_dim=3, **kwargs)
    x = torch.randn(T, 3)
    influence = gradient_influence(model, x)
    jacobian = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x)  # (t, out, s, in)
    torch.testing.assert_close(influence, jacobian.pow(2).sum(dim=(1, 3)).sqrt())
    assert influence.shape == (T, T) and influence.triu(1).abs().max() == 0
    assert (influence.diagonal() > 0).all()
    assert model.training  # its mode is restored


def test_gradient_influence_on_fields_and_refusals():
    model = build_model("convgru", input_shape=(1, 4, 4), output_dim=16, hidden_channels=2)
    influence = gradient_influence(model, torch.randn(4, 1, 4, 4))
    assert influence.shape == (4, 4) and influence.triu(1).abs().max() == 0 and (influence.diagonal() > 0).all()
    with pytest.raises(ValueError, match="needs float inputs"):
        gradient_influence(build_model("gru", vocab_size=5, output_dim=5, hidden_dim=4), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="backward passes"):
        gradient_influence(model, torch.randn(300, 1, 4, 4))


def test_attention_maps_are_causal_distributions_that_reproduce_the_attention_output():
    torch.manual_seed(0)
    model = build_model(
        "transformer", input_dim=3, output_dim=3, d_model=16, num_heads=4, num_layers=2, max_length=32
    ).eval()
    x = torch.randn(2, T, 3)
    maps = attention_maps(model, x)
    assert sorted(maps) == ["attention_layer1", "attention_layer2"]
    attention = model.blocks[0].attention
    inputs, outputs = [], []

    def keep(module, args, output):
        inputs.append(args[0])
        outputs.append(output)

    handle = attention.register_forward_hook(keep)
    with torch.no_grad():
        model(x)
    handle.remove()
    for weights in maps.values():
        assert weights.shape == (2, 4, T, T) and weights.triu(1).abs().max() == 0
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, T))
    # weights @ v, merged over heads and projected, is the module's own (SDPA) output.
    with torch.no_grad():
        v = attention.qkv(inputs[0]).view(2, T, 3, 4, 4)[:, :, 2].transpose(1, 2)
        rebuilt = attention.out((maps["attention_layer1"] @ v).transpose(1, 2).reshape(2, T, 16))
    torch.testing.assert_close(rebuilt, outputs[0], rtol=1e-5, atol=1e-5)
    assert set(influence_maps(model, x[0])) == set(maps)


SMALL = [
    "data.generator.T=600",
    "data.batch_size=16",
    "callbacks=heatmap",
    "debug=fdr",
    "callbacks.rich_progress_bar=null",
    "callbacks.gate_heatmap.slice_length=40",
]


@pytest.mark.parametrize(
    "model",
    [
        ["model=transformer", "model.d_model=16", "model.num_layers=1"],  # attention
        ["model=gru", "model.hidden_dim=8"],
    ],
)  # gradients, inside the validation loop
def test_the_heatmap_callback_draws_influence_maps_also_for_models_without_gates(tmp_path, model):
    train(compose_config([*model, *SMALL], tmp_path))
    assert (tmp_path / "figures" / "final" / "influence_maps.png").stat().st_size > 10_000
    assert not (tmp_path / "figures" / "final" / "gate_heatmap.png").exists()


def test_the_posthoc_commands_find_the_run_of_a_checkpoint_given_alone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train_like_the_cli(
        [
            "model=z2_seam",
            "model.hidden_dim=8",
            "data.generator.T=600",
            "data.batch_size=16",
            "debug=fdr",
            "logger=none",
            "callbacks.rich_progress_bar=null",
        ],
        run_dir,
    )
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    path = influence_main(["--checkpoint", checkpoint, "--index", "3"])
    assert path == run_dir / "figures" / "posthoc" / "influence_maps.png" and path.stat().st_size > 10_000
    maps = torch.load(path.with_suffix(".pt"), weights_only=True)
    assert maps["gradient_influence"].shape == (10, 10) and maps["gradient_influence"].triu(1).abs().max() == 0
    gate_paths = gate_heatmaps_main(["--checkpoint", checkpoint, "--length", "60"])
    assert all(p.parent == run_dir / "figures" / "posthoc" and p.is_file() for p in gate_paths.values())
    stray = tmp_path / "stray.ckpt"
    stray.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    for main, argv in ((gate_heatmaps_main, ["--checkpoint", str(stray)]), (influence_main, [])):
        with pytest.raises(SystemExit):
            main(argv)
    errors = capsys.readouterr().err
    assert "lies in no run directory" in errors and "pass --experiment RUN, --checkpoint CKPT or both" in errors
