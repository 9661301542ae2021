"""A toy model added the way docs/extending.md describes: this one file and configs/model/toy_mean.yaml.

It predicts every step as a learned scale times the running mean of the inputs so far (causal).
"""

from __future__ import annotations

import torch
from torch import nn

from models import SequenceModel, register_model


@register_model("toy_mean")
class ToyMeanModel(SequenceModel):
    """Prediction at step t: scale * mean(x_1..x_t) mapped to the output size.

    Args:
        output_dim: size of each step's output.
        input_dim: size of the input vectors (the DataModule declares it).
        init_scale: starting value of the learned scale.
    """

    supported_tasks = ("regression",)

    def __init__(self, output_dim: int, input_dim: int, init_scale: float = 1.0) -> None:
        super().__init__()
        if init_scale <= 0:
            raise ValueError(f"init_scale={init_scale} must be > 0.")
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.readout = nn.Linear(input_dim, output_dim, bias=False)

    def forward(self, x: torch.Tensor, return_diagnostics: bool = False):
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).reshape(1, -1, 1)
        prediction = self.readout(self.scale * x.cumsum(dim=1) / steps)
        return (prediction, {}) if return_diagnostics else prediction
