"""Interfaces a component implements. Subclass these in plugins; every method has a no-op default."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import GPTConfig


class PositionalEncoding(nn.Module):
    """Positional information, injected at one or more of three places (see ``hookspecs``).

    ``positions`` are absolute int64 positions, (batch, seq): with a KV cache they continue from the
    cached length, with left padding they skip the pads.
    """

    component_kind: ClassVar[str] = "pos"  # how the registry tells the kinds apart without importing this module

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        """Raise ``ValueError`` naming the field when ``config`` cannot be supported."""

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings (batch, seq, n_embd) -> embeddings carrying position."""
        return x

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys (batch, heads, seq, head_dim) of the new tokens -> rotated ones."""
        return q, k

    def score_bias(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor | None:
        """Additive attention-score bias broadcastable to (batch, heads, q_len, k_len), or None."""
        return None


class Activation(nn.Module):
    """The MLP nonlinearity. ``gated = True`` doubles the up-projection and receives both halves."""

    component_kind: ClassVar[str] = "act"
    gated: bool = False

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()

    @classmethod
    def check_config(cls, config: GPTConfig) -> None:
        """Raise ``ValueError`` naming the field when ``config`` cannot be supported."""
