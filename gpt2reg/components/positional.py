"""Built-in positional encodings: learned and sinusoidal tables, RoPE, and none."""

from __future__ import annotations

import torch
from torch import nn

from .base import PositionalEncoding


class LearnedPositions(PositionalEncoding):
    """GPT-2's learned table of ``block_size`` position vectors added to the token embeddings."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.weight = nn.Parameter(torch.empty(config.block_size, config.n_embd))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def embed(self, x, positions):
        return x + nn.functional.embedding(positions, self.weight)


def _inverse_frequencies(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


class SinusoidalPositions(PositionalEncoding):
    """The fixed sin/cos table of "Attention Is All You Need", computed from the positions."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.dim = config.n_embd

    @classmethod
    def check_config(cls, config) -> None:
        if config.n_embd % 2:
            raise ValueError(f"n_embd={config.n_embd}: sinusoidal positions need an even n_embd")

    def embed(self, x, positions):
        # Frequencies are made here in fp32, not kept as a buffer: .half() would cast a buffer, and
        # fp16 angles go wrong at large positions.
        inv_freq = _inverse_frequencies(self.dim, 10000.0).to(positions.device)
        angles = positions.unsqueeze(-1).float() * inv_freq  # (B, T, C/2)
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleaved sin, cos
        return x + table.to(x.dtype)


class RotaryPositions(PositionalEncoding):
    """Rotary position embedding (RoPE, rotate-half layout) on queries and keys, with real cos/sin."""

    base = 10000.0

    def __init__(self, config) -> None:
        super().__init__(config)
        self.head_dim = config.n_embd // config.n_head

    @classmethod
    def check_config(cls, config) -> None:
        head_dim = config.n_embd // config.n_head
        if head_dim % 2:
            raise ValueError(
                f"n_embd/n_head = {head_dim}: RoPE needs an even head size (choose n_embd, n_head so it is)"
            )

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def rotate(self, q, k, positions):
        inv_freq = _inverse_frequencies(self.head_dim, self.base).to(positions.device)  # fp32 even in a .half() model
        angles = positions.unsqueeze(-1).float() * inv_freq  # (B, T, D/2)
        angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)  # (B, 1, T, D)
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
        return q * cos + self._rotate_half(q) * sin, k * cos + self._rotate_half(k) * sin


class NoPositions(PositionalEncoding):
    """No positional signal: order is known only through the causal mask (NoPE)."""


__all__ = ["LearnedPositions", "SinusoidalPositions", "RotaryPositions", "NoPositions"]
