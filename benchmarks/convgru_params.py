"""Parameter counts of `convgru` across its options, side by side.

    python benchmarks/convgru_params.py                       # hidden 32 and 256, kernel 3, 1 x 16 x 16 fields
    python benchmarks/convgru_params.py --hidden 16 64 --kernel-size 5 --num-groups 8
    python benchmarks/convgru_params.py --resnet-channels 64 128 256   # the resnet_convgru table too

Every variant is one ConvGRU layer predicting the next field. "Recurrent convs" counts the weights
of U (the update/reset and candidate convolutions), which grouping divides by num_groups; "all" is
the whole model. Ratios are against the standard model with the same input channels. A residual
needs input channels = hidden channels, so its rows read hidden-channel fields.

The resnet_convgru table counts its ResNet encoder and the whole model (ConvGRU hidden = the
encoder's last width, as the model config's defaults pair them), standard against depthwise-separable
(encoder and ConvGRU) and against weight normalisation (which adds one scale per output channel).
"""

from __future__ import annotations

import argparse

from torch import nn

from benchmarks.cli import positive_int
from models import build_model

GRID = 16


def variants(num_groups: int) -> dict[str, tuple[dict, bool]]:
    """Label -> (model options, whether the field has hidden-channel inputs)."""
    return {
        "standard": ({}, False),
        "depthwise-separable": ({"use_depthwise": True}, False),
        f"grouped ({num_groups} groups)": ({"use_grouped": True, "num_groups": num_groups}, False),
        f"depthwise + grouped ({num_groups})": (
            {"use_depthwise": True, "use_grouped": True, "num_groups": num_groups},
            False,
        ),
        "layer norm (GroupNorm)": ({"use_layer_norm": True}, False),
        "learnable h0": ({"learnable_h0": True}, False),
        "standard, C = hidden": ({}, True),
        "residual, C = hidden": ({"use_residual": True}, True),
    }


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(hidden: int, kernel_size: int, options: dict, hidden_inputs: bool) -> tuple[int, int]:
    """(recurrent conv parameters, all parameters) of one ConvGRU layer on 1- or hidden-channel fields."""
    channels = hidden if hidden_inputs else 1
    model = build_model(
        "convgru",
        input_shape=(channels, GRID, GRID),
        output_dim=channels * GRID * GRID,
        hidden_channels=hidden,
        kernel_size=kernel_size,
        **options,
    )
    layer = model.layers[0]
    return count(layer.gate_conv) + count(layer.candidate_conv), count(model)


RESNET_VARIANTS = {
    "standard": {},
    "standard + weight norm": {"use_weight_norm": True},
    "depthwise-separable": {"conv_params": {"type": "depthwise"}, "use_depthwise": True},
}


def resnet_parameter_counts(channels: list[int], options: dict) -> tuple[int, int]:
    """(encoder parameters, all parameters) of resnet_convgru on 1-channel fields."""
    model = build_model(
        "resnet_convgru",
        input_shape=(1, GRID, GRID),
        output_dim=GRID * GRID,
        channels=channels,
        hidden_channels=channels[-1],
        **options,
    )
    return count(model.encoder), count(model)


def print_resnet_table(channels: list[int]) -> float:
    """Print the resnet_convgru table; returns the depthwise-separable reduction of all parameters."""
    table = {label: resnet_parameter_counts(channels, options) for label, options in RESNET_VARIANTS.items()}
    print(
        f"\n## resnet_convgru parameters, channels {channels}, ConvGRU hidden {channels[-1]}, kernel 3, "
        f"{GRID} x {GRID} fields (ratio = parameters / standard's)\n"
    )
    print("| option | encoder | all | ratio |")
    print("|---|---|---|---|")
    for label, (encoder, total) in table.items():
        print(f"| {label} | {encoder:,} | {total:,} | {total / table['standard'][1]:.3f} |")
    cut = 1 - table["depthwise-separable"][1] / table["standard"][1]
    print(
        f"\nresnet_convgru depthwise-separable vs standard: {cut:.1%} fewer parameters "
        f"(target >= 80%) {'PASS' if cut >= 0.8 else 'MISS'}"
    )
    return cut


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--hidden", type=positive_int, nargs="+", default=[32, 256], help="hidden channel counts (columns)"
    )
    parser.add_argument("--kernel-size", type=positive_int, default=3)
    parser.add_argument("--num-groups", type=positive_int, default=4, help="groups of the grouped variants")
    parser.add_argument(
        "--resnet-channels",
        type=positive_int,
        nargs="*",
        default=[64, 128, 256],
        help="encoder widths of the resnet_convgru table (none: no such table)",
    )
    args = parser.parse_args(argv)

    table = {
        label: {hidden: parameter_counts(hidden, args.kernel_size, options, hidden_inputs) for hidden in args.hidden}
        for label, (options, hidden_inputs) in variants(args.num_groups).items()
    }
    print(
        f"\n## convgru parameters, 1 layer, kernel {args.kernel_size}, {GRID} x {GRID} fields, field head "
        f"(ratio = parameters / standard's with the same input channels)\n"
    )
    print("| option | " + " | ".join(f"hidden {h}: recurrent convs | all | ratio" for h in args.hidden) + " |")
    print("|---|" + "---|---|---|" * len(args.hidden))
    for label, counts in table.items():
        reference = table["standard, C = hidden" if "C = hidden" in label else "standard"]
        cells = [f"{counts[h][0]:,} | {counts[h][1]:,} | {counts[h][1] / reference[h][1]:.3f}" for h in args.hidden]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if 256 in args.hidden and args.kernel_size == 3:
        cut = 1 - table["depthwise-separable"][256][1] / table["standard"][256][1]
        print(
            f"\ndepthwise-separable vs standard at hidden 256, kernel 3: {cut:.1%} fewer parameters "
            f"(target >= 80%) {'PASS' if cut >= 0.8 else 'MISS'}"
        )
    if args.resnet_channels:
        print_resnet_table(args.resnet_channels)


if __name__ == "__main__":
    main()
