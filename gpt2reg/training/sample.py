"""A short sample at each evaluation: shows what the model has learned, in words.

``generate``'s sampler (top-k at a temperature, with the KV cache) on the model being trained: it draws
from its own seeded numpy generator, so sampling never disturbs the training run's random state, and
gives the model its training mode back.
"""

from __future__ import annotations

from ..generation import generate
from ..model import GPT
from ..tokenizer import EOT_ID, encode


def sample_text(model: GPT, prompt: str = "", max_tokens: int = 64, *, seed: int = 0, temperature: float = 0.8,
                top_k: int = 50) -> str:
    """Continue ``prompt`` (or a fresh document) by up to ``max_tokens`` tokens; stops at end-of-text."""
    ids = encode(prompt) if prompt else [EOT_ID]
    ids = ids[-(model.config.block_size - 1) :]  # the most recent tokens, quietly: a sample is a glimpse
    max_tokens = min(max_tokens, model.config.block_size - len(ids))
    sample = generate(model, ids, max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed)[0]
    return prompt + sample.text
