"""Built-in MLP activations; the gated ones receive the widened up-projection and halve it."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .base import Activation


class GeluTanh(Activation):
    """GELU with the tanh approximation GPT-2 was trained with (HF's ``gelu_new``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class Gelu(Activation):
    """Exact GELU, x * Phi(x) with erf; nanoGPT checkpoints use this."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class Relu(Activation):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class Silu(Activation):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class ReluSquared(Activation):
    """relu(x)^2, from Primer (So et al., 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLU(Activation):
    """silu(gate) * value (Shazeer, 2020); the first half of the input is the gate."""

    gated = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.chunk(2, dim=-1)
        return F.silu(gate) * value


class GeGLU(Activation):
    """gelu(gate) * value (Shazeer, 2020); the first half of the input is the gate."""

    gated = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.chunk(2, dim=-1)
        return F.gelu(gate) * value
