"""Built-in normalization layers over the last dimension."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm(nn.Module):
    """LayerNorm with a learned scale and, when ``config.bias``, a learned shift (GPT-2's)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if config.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): scale only, no mean subtraction."""

    def __init__(self, config) -> None:
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed in fp32 so bf16/fp16 activations do not lose the mean of squares.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight
