"""The server's batch engine for a torch model (a model directory, checkpoint or hub name).

Imported only when the server is given a model rather than an ``.onnx`` file, so an ONNX server never
imports torch. The cache stays on the model's device as tensors; only token ids, the mask and the
last position's logits cross to and from numpy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model import GPT, GrowingKV, KVCache
from .engine import BatchEngine, KVCacheBatch


class TorchCache:
    """``CacheBackend`` over ``GPT.forward_cached``: the cache is the model's (key, value) tensors per layer.

    After a call the cache is a ``GrowingKV`` per layer, so the next step writes its keys and values in
    place instead of copying the whole cache (B rows x context x 2 x layers x width) with ``torch.cat``;
    the reshapes below read it as (key, value) pairs and return new tuples, as nothing here goes back
    to an earlier cache.
    """

    def __init__(self, model: GPT) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.block_size = model.config.block_size

    def run(self, ids: np.ndarray, mask: np.ndarray, past: KVCache | None) -> tuple[np.ndarray, KVCache]:
        with torch.inference_mode():
            logits, presents = self.model.forward_cached(
                torch.from_numpy(ids).to(self.device), past,
                attention_mask=torch.from_numpy(mask).to(self.device), last_only=True,
            )
            return logits[:, -1].float().cpu().numpy(), GrowingKV.wrap(presents, self.block_size)

    def logits(self, ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.tensor([ids], device=self.device))[0].float().cpu().numpy()

    def left_pad(self, past: KVCache, width: int) -> KVCache:
        pad = width - past[0][0].shape[2]
        return past if pad == 0 else [(F.pad(k, (0, 0, pad, 0)), F.pad(v, (0, 0, pad, 0))) for k, v in past]

    def concat(self, first: KVCache, second: KVCache) -> KVCache:
        return [(torch.cat((k1, k2)), torch.cat((v1, v2))) for (k1, v1), (k2, v2) in zip(first, second, strict=True)]

    def take(self, past: KVCache, rows: np.ndarray, start: int) -> KVCache:
        index = torch.from_numpy(rows).to(self.device)
        return [(k.index_select(0, index)[:, :, start:].contiguous(), v.index_select(0, index)[:, :, start:].contiguous())
                for k, v in past]

    def repeat(self, past: KVCache, copies: np.ndarray) -> KVCache:
        counts = torch.from_numpy(copies).to(self.device)
        return [(k.repeat_interleave(counts, dim=0), v.repeat_interleave(counts, dim=0)) for k, v in past]


def torch_engine(model: GPT) -> BatchEngine:
    """The batch engine for a loaded ``GPT``."""
    return KVCacheBatch(TorchCache(model))
