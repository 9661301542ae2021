"""Influence maps: how much each input step s shapes the model at step t, drawn as a t x s map.

    python visualization/influence_maps.py --experiment logs/train/runs/<run>
    python visualization/influence_maps.py --experiment <run> --checkpoint <run>/checkpoints/last.ckpt --index 100

Three kinds, by model (`influence_maps` picks):
- transformers (`transformer`, `latent_transformer`): the attention weights softmax(q k^T / sqrt(d))
  of every layer and head, (heads, T, T) per layer, recomputed from each attention module's input,
  so they are exactly what the module applies (rows sum to 1, zero above the diagonal);
- `z2_delta`: the exact influence of the linear recurrence h_t = a_t h_{t-1} + b_t of the first
  block's odd channels: d h_t / d b_s = prod_{k=s+1..t} a_k per channel (1 on the diagonal, 0 for
  s > t). The map is its mean absolute value over the channels, mean_c |prod_{k=s+1..t} a_{k,c}|, in
  [0, 1] when every |a| <= 1; signed products are kept as well (a seam flips their sign);
- every other model with vector or field inputs: the gradient influence ||d y_t / d x_s||_F, the
  Frobenius norm of the Jacobian block of the prediction at t with respect to the input at s
  (autograd; zero above the diagonal for a causal model).

Functions return tensors; `plot_influence_maps` draws them; the gate heatmap callback draws them
during training (`callbacks=heatmap`, `influence_maps: true`), and this script after it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from models.gated_delta import Z2GatedDeltaRNN
from models.latent_transformer import CausalSelfAttention, SimpleTransformer

DPI = 150
MAX_JACOBIAN_PASSES = 4096  # backward passes of one gradient map (steps x output values)


def attention_maps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"attention_layer<l>": (B, heads, T', T')} for every CausalSelfAttention of `model` on x
    (T' counts latent tokens too), in eval mode without gradients."""
    modules = [module for module in model.modules() if isinstance(module, CausalSelfAttention)]
    if not modules:
        raise ValueError(f"model {type(model).__name__} has no attention layers; use gradient_influence instead.")
    maps: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module: CausalSelfAttention, args: tuple) -> None:
            h = args[0]
            batch, length, width = h.shape
            q, k, _ = (
                module.qkv(h).view(batch, length, 3, module.num_heads, width // module.num_heads).permute(2, 0, 3, 1, 4)
            )
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            causal = torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
            maps[name] = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1).cpu()

        return hook

    handles = [
        module.register_forward_pre_hook(record(f"attention_layer{index}"))
        for index, module in enumerate(modules, start=1)
    ]
    try:
        _evaluate(model, lambda: model(x))
    finally:
        for handle in handles:
            handle.remove()
    return maps


def products_of_decays(decays: torch.Tensor) -> torch.Tensor:
    """P[..., t, s, c] = prod_{k=s+1..t} a[..., k, c] for s <= t, 0 for s > t, from decays (..., T, C)."""
    steps = decays.shape[-2]
    products = decays.new_zeros(*decays.shape[:-2], steps, steps, decays.shape[-1])
    for t in range(steps):
        if t:
            products[..., t, :t, :] = products[..., t - 1, :t, :] * decays[..., t : t + 1, :]
        products[..., t, t, :] = 1.0
    return products


def delta_influence(model: Z2GatedDeltaRNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """z2_delta's exact influence maps of its first block's odd recurrence on x:
    {"influence": mean_c |P| (B, T, T), "signed_influence": mean_c P (B, T, T)}."""
    unit = model.blocks[0].unit
    captured: dict[str, torch.Tensor] = {}
    handle = unit.register_forward_pre_hook(lambda module, args: captured.setdefault("u", args[0]))
    try:
        _evaluate(model, lambda: model(x))
        products = _evaluate(model, lambda: products_of_decays(unit.odd_decays(captured["u"]).double()))
    finally:
        handle.remove()
    return {"influence": products.abs().mean(-1).float().cpu(), "signed_influence": products.mean(-1).float().cpu()}


def gradient_influence(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||d y_t / d x_s||_F (T, T) for one sample x (T, ...) of float inputs, in eval mode."""
    if not torch.is_floating_point(x):
        raise ValueError(
            "gradient_influence needs float inputs (vectors or fields); token ids have no gradient, "
            "use attention_maps for the transformers."
        )
    was_training = model.training
    model.eval()
    # Callers may sit inside Lightning's validation loop, which runs under inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        try:
            return _jacobian_norms(model, x)
        finally:
            model.train(was_training)


def _jacobian_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||d y_t / d x_s||_F from one backward pass per output value of the sample x (requires grad)."""
    outputs = model(x.unsqueeze(0))[0].flatten(1)  # (T, output values)
    if outputs.numel() > MAX_JACOBIAN_PASSES:
        raise ValueError(
            f"a gradient map of {outputs.shape[0]} steps x {outputs.shape[1]} output values needs "
            f"{outputs.numel()} backward passes (at most {MAX_JACOBIAN_PASSES}); pass a shorter sample."
        )
    squared = x.new_zeros(outputs.shape[0], x.shape[0], dtype=torch.float64)
    for t in range(outputs.shape[0]):
        for value in outputs[t]:
            (gradient,) = torch.autograd.grad(value, x, retain_graph=True)
            squared[t] += gradient.flatten(1).double().pow(2).sum(-1)
    return squared.sqrt().float()


def influence_maps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The influence maps of `model` on one sample x (T, ...), each (rows t, columns s) or
    (heads, t, s): attention for transformers, the exact map for z2_delta, the gradient map otherwise."""
    if isinstance(model, SimpleTransformer):
        return {name: values[0] for name, values in attention_maps(model, x.unsqueeze(0)).items()}
    if isinstance(model, Z2GatedDeltaRNN):
        return {name: values[0] for name, values in delta_influence(model, x.unsqueeze(0)).items()}
    return {"gradient_influence": gradient_influence(model, x)}


def _evaluate(model: nn.Module, compute):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return compute()
    finally:
        model.train(was_training)


TITLES = {
    "influence": "exact influence mean_c |prod a_k|",
    "signed_influence": "signed mean_c prod a_k",
    "gradient_influence": "gradient influence ||d y_t / d x_s||",
}


def plot_influence_maps(maps: dict[str, torch.Tensor], save_path: str | Path | None = None, title: str = "") -> Figure:
    """One heatmap per map (rows: layers, columns: heads for attention), t down, s across."""
    panels = [
        (name, values[head] if values.dim() == 3 else values, head if values.dim() == 3 else None)
        for name, values in maps.items()
        for head in range(values.shape[0] if values.dim() == 3 else 1)
    ]
    columns = max(values.shape[0] if values.dim() == 3 else 1 for values in maps.values())
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.2 * columns + 1, 3.0 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, values, head) in zip(axes, panels):
        signed = name == "signed_influence"
        limit = float(values.abs().max()) or 1.0
        image = ax.imshow(
            values.numpy(),
            cmap="RdBu_r" if signed else "magma",
            vmin=-limit if signed else 0.0,
            vmax=limit,
            interpolation="nearest",
        )
        label = TITLES.get(name, name.replace("attention_", "attention, "))
        ax.set_title(f"{label}, head {head + 1}" if head is not None else label, fontsize=8)
        ax.set_xlabel("input step s")
        ax.set_ylabel("step t")
        fig.colorbar(image, ax=ax, shrink=0.8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    if save_path is not None:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, dpi=DPI)
    return fig


def sample_window(datamodule, split: str = "val", index: int = 0) -> torch.Tensor:
    """Input x of window `index` of a set-up DataModule's split dataset."""
    dataset = datamodule.datasets[split]
    if not 0 <= index < len(dataset):
        raise ValueError(f"index={index} is outside the {split} split, which has {len(dataset)} windows.")
    return dataset[index]["x"]


def main(argv: list[str] | None = None) -> Path:
    """Draw the influence maps of a finished run on one window; returns the PNG path."""
    # Here, not at the top: the heatmap callback imports this module while train_hydra builds a run.
    from visualization.run_arguments import add_run_arguments, load_chosen_run

    parser = argparse.ArgumentParser(description="Draw the influence maps of a finished run on one window.")
    add_run_arguments(parser)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="split of the window")
    parser.add_argument("--index", type=int, default=0, help="window index in that split (default 0)")
    parser.add_argument("--output", type=Path, default=None, help="figure directory (default: <run>/figures/posthoc)")
    args = parser.parse_args(argv)
    run = load_chosen_run(parser, args)
    try:
        x = sample_window(run.datamodule, args.split, args.index)
        maps = influence_maps(run.module.model, x)
    except ValueError as error:
        parser.error(str(error))
    output = args.output or args.experiment / "figures" / "posthoc"
    path = output / "influence_maps.png"
    plot_influence_maps(maps, path, f"{run.module.hparams.model_type}: {args.split} window {args.index}")
    torch.save(maps, output / "influence_maps.pt")
    print(path)
    return path


if __name__ == "__main__":
    main()
