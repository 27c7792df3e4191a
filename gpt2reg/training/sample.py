"""A short sample at each evaluation: shows what the model has learned, in words.

Deliberately minimal (top-k sampling with the KV cache) and drawn from its own seeded generator, so
sampling never disturbs the training run's random state.
"""

from __future__ import annotations

import torch

from ..model import GPT
from ..tokenizer import EOT_ID, get_tokenizer


@torch.no_grad()
def sample_text(model: GPT, prompt: str = "", max_tokens: int = 64, *, seed: int = 0, temperature: float = 0.8,
                top_k: int = 50) -> str:
    """Continue ``prompt`` (or a fresh document) by up to ``max_tokens`` tokens; stops at end-of-text."""
    tokenizer = get_tokenizer()
    device = next(model.parameters()).device
    ids = tokenizer.encode_ordinary(prompt) if prompt else [EOT_ID]
    ids = ids[-(model.config.block_size - 1) :]
    max_tokens = min(max_tokens, model.config.block_size - len(ids))
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[int] = []
    x = torch.tensor([ids], device=device)
    past = None
    for _ in range(max_tokens):
        logits, past = model.forward_cached(x, past, last_only=True)
        logits = logits[0, -1, : tokenizer.n_vocab].float() / temperature  # a padded vocab's extra rows never win
        if top_k < logits.numel():
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if token == EOT_ID:
            break
        out.append(token)
        x = torch.tensor([[token]], device=device)
    model.train(was_training)
    return prompt + tokenizer.decode(out)
