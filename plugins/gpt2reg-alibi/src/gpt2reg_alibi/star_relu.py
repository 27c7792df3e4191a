"""StarReLU (Yu et al., 2022, "MetaFormer Baselines"): s * relu(x)^2 + b with learned scalars s, b."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gpt2reg.components.base import Activation


class StarReLU(Activation):
    """Squared ReLU rescaled to zero mean and unit variance for normal inputs (s = 0.8944, b = -0.4472),
    with the scale and shift learned from there."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.scale = nn.Parameter(torch.tensor(0.8944))
        self.shift = nn.Parameter(torch.tensor(-0.4472))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x).square() + self.shift
