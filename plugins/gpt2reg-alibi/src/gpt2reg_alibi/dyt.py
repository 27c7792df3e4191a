"""DyT, dynamic tanh (Zhu et al., 2025, "Transformers without Normalization"): a drop-in for LayerNorm
that squashes with tanh(alpha * x) instead of computing mean and variance."""

from __future__ import annotations

import torch
from torch import nn


class DyT(nn.Module):
    """weight * tanh(alpha * x) + bias over the last dimension; alpha is one learned scalar.

    ``config.norm_eps`` has nothing to guard (no division); the bias follows ``config.bias`` as
    LayerNorm's does.
    """

    alpha_init = 0.5  # the paper's default for non-LLM widths; its LLM runs tune it per layer

    def __init__(self, config) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(self.alpha_init))
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if config.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.alpha * x) * self.weight
        return y if self.bias is None else y + self.bias
