"""ALiBi (Press et al., 2022, "Train Short, Test Long"): no position embeddings; each head adds
-slope_h * (query position - key position) to its attention scores.
"""

from __future__ import annotations

import math

import torch

from gpt2reg.components.base import PositionalEncoding


def alibi_slopes(n_head: int) -> list[float]:
    """The paper's head slopes: 2^(-8i/n) for n a power of two; otherwise the slopes of the nearest
    lower power of two followed by every other slope of the next higher one (the reference code)."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return power_of_two(n_head)
    lower = 2 ** math.floor(math.log2(n_head))
    return power_of_two(lower) + alibi_slopes(2 * lower)[0::2][: n_head - lower]


class ALiBi(PositionalEncoding):
    """Linear attention biases: acts only through ``score_bias``, so the token embeddings stay plain.

    Positions come from gpt2reg (absolute, continuing past the KV cache, skipping left pads), so the
    bias of a cached step or a padded row equals that of a full recompute.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        # Derived from n_head, not learned: non-persistent, so checkpoints carry nothing for it.
        slopes = torch.tensor(alibi_slopes(config.n_head), dtype=torch.float32)
        self.register_buffer("slopes", slopes.view(1, -1, 1, 1), persistent=False)

    def score_bias(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        # (B, 1, q, k) distances; the causal mask removes the future, so only k <= q matters.
        distance = (q_positions.unsqueeze(-1) - k_positions.unsqueeze(-2)).unsqueeze(1).float()
        return -self.slopes * distance  # (B, heads, q, k)


__all__ = ["ALiBi", "alibi_slopes"]
