"""The decoding ``Backend`` of a torch ``GPT``: what ``generate`` and the server decode a torch model through.

The cache stays on the model's device as tensors; only token ids, the mask and logits cross to and from
numpy. After a call the cache is a ``GrowingKV`` per layer, so the next step writes its keys and values
in place instead of copying the whole cache (rows x context x 2 x layers x width) with ``torch.cat``;
the reshapes (rows joining and leaving) read it as (key, value) pairs and return new tuples, as nothing
goes back to an earlier cache.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .decoding import Engine, engine
from .model import GPT, GrowingKV, KVCache


class TorchBackend:
    """``Backend`` over ``GPT.forward_cached`` (``use_cache=False``: the model's plain forward, recomputing)."""

    def __init__(self, model: GPT, use_cache: bool = True) -> None:
        self.model = model
        self.kv_cache = use_cache
        self.vocab_size = model.config.vocab_size
        self.block_size = model.config.block_size
        weight = next(model.parameters())
        self.device = weight.device
        c = model.config  # the KV cache counts against host memory only where it lives there
        self.cache_bytes_per_token = 2 * c.n_layer * c.n_embd * weight.element_size() if self.device.type == "cpu" else 0

    def logits(self, ids: list[int], keep: int = 0) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.tensor([ids], device=self.device))[0, -keep:].float().cpu().numpy()

    def run(self, ids: np.ndarray, mask: np.ndarray, past: KVCache | None) -> tuple[np.ndarray, KVCache]:
        # No mask where no row is padded: the model's causal path, and the positions the mask would give.
        attention_mask = None if mask.all() else torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            logits, presents = self.model.forward_cached(torch.from_numpy(ids).to(self.device), past,
                                                         attention_mask=attention_mask, last_only=True)
            return logits[:, -1].float().cpu().numpy(), GrowingKV.wrap(presents, self.block_size)

    def join(self, first: KVCache, second: KVCache, width: int) -> KVCache:
        def pad(t: torch.Tensor) -> torch.Tensor:
            return t if t.shape[2] == width else F.pad(t, (0, 0, width - t.shape[2], 0))

        return [(torch.cat((pad(k1), pad(k2))), torch.cat((pad(v1), pad(v2))))
                for (k1, v1), (k2, v2) in zip(first, second, strict=True)]

    def take(self, past: KVCache, rows: np.ndarray, start: int) -> tuple[KVCache, int]:
        index = torch.from_numpy(rows).to(self.device)
        return [(k.index_select(0, index)[:, :, start:].contiguous(), v.index_select(0, index)[:, :, start:].contiguous())
                for k, v in past], start

    def repeat(self, past: KVCache, copies: np.ndarray) -> KVCache:
        counts = torch.from_numpy(copies).to(self.device)
        return [(k.repeat_interleave(counts, dim=0), v.repeat_interleave(counts, dim=0)) for k, v in past]


def torch_engine(model: GPT, use_cache: bool = True) -> Engine:
    """The decoding engine of a loaded ``GPT`` (``use_cache=False`` recomputes every step: the reference)."""
    return engine(TorchBackend(model, use_cache))
