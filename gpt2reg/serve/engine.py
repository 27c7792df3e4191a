"""A batch of sequences that members join and leave between decode steps (continuous batching).

``KVCacheBatch`` keeps every row left-padded to one width: the KV cache is (batch, heads, width,
head_dim) and ``attention_mask`` (batch, width) marks each row's real positions, so position ids
(the count of real tokens before each one) and attention ignore the pads. A joining request is
prefilled (with the others joining at the same step), then its cache and mask are left-padded to the batch's width (or the batch's to
its own) and appended; a leaving row is dropped and any leading column that no row uses any more is
cut, so the width is always the longest row and never exceeds the context.

The cache arrays themselves belong to a ``CacheBackend``: numpy under onnxruntime here (torch-free),
tensors on the model's device for torch models (``gpt2reg.serve.torch_engine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..generation import left_padded
from ..ort.runtime import InPlaceKV, OnnxGPT


class BatchEngine(Protocol):
    """What the batcher drives: rows are numbered in the order they were added and kept."""

    vocab_size: int
    block_size: int

    def add(self, prompts: list[list[int]], copies: Sequence[int]) -> np.ndarray:
        """Append ``copies[i]`` rows for prompt ``i``, in order; the logits (rows, vocab) after each."""
        ...

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        """Append one token to every row; the logits (rows, vocab) that follow."""
        ...

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows (ascending), dropping the others."""
        ...

    def prompt_logits(self, prompt: list[int]) -> np.ndarray:
        """The logits (len(prompt), vocab) at every position of ``prompt`` alone, outside the batch (echo)."""
        ...


class CacheBackend(Protocol):
    """One KV-cache model call, and the four reshapes of its cache that joining and leaving need."""

    vocab_size: int
    block_size: int

    def run(self, ids: np.ndarray, mask: np.ndarray, past: Any) -> tuple[np.ndarray, Any]:
        """Logits (batch, vocab) after the last of ``ids`` (batch, seq), and the extended cache."""
        ...

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits (len(ids), vocab) at every position of one sequence, no cache."""
        ...

    def left_pad(self, past: Any, width: int) -> Any:
        """The cache with zero columns on the left up to ``width`` positions."""
        ...

    def concat(self, first: Any, second: Any) -> Any:
        """Two caches of one width, rows of ``first`` then rows of ``second``."""
        ...

    def take(self, past: Any, rows: np.ndarray, start: int) -> Any:
        """The given rows, positions from ``start`` on."""
        ...

    def repeat(self, past: Any, copies: np.ndarray) -> Any:
        """Row ``i`` ``copies[i]`` times in a row."""
        ...


class KVCacheBatch:
    """A ``BatchEngine`` over a KV-cache model (see the module docstring for the layout)."""

    def __init__(self, backend: CacheBackend) -> None:
        self.backend = backend
        self.vocab_size = backend.vocab_size
        self.block_size = backend.block_size
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.past: Any = None

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def add(self, prompts: list[list[int]], copies: Sequence[int]) -> np.ndarray:
        ids, mask = left_padded(prompts, self.vocab_size)  # all joining prompts in one prefill
        logits, past = self.backend.run(ids, mask, None)
        if any(c != 1 for c in copies):
            counts = np.asarray(copies, dtype=np.int64)
            logits, mask = np.repeat(logits, counts, axis=0), np.repeat(mask, counts, axis=0)
            past = self.backend.repeat(past, counts)
        if self.rows == 0:
            self.mask, self.past = mask, past
            return logits
        width = max(self.width, mask.shape[1])
        self.past = self.backend.concat(self.backend.left_pad(self.past, width), self.backend.left_pad(past, width))
        self.mask = np.concatenate((_pad_mask(self.mask, width), _pad_mask(mask, width)))
        return logits

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        self.mask = np.concatenate((self.mask, np.ones((self.rows, 1), dtype=np.int64)), axis=1)
        logits, self.past = self.backend.run(np.asarray(tokens, dtype=np.int64).reshape(-1, 1), self.mask, self.past)
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        if len(rows) == self.rows:
            return
        if not rows:
            self.mask, self.past = np.zeros((0, 0), dtype=np.int64), None
            return
        index = np.asarray(rows, dtype=np.int64)
        mask = self.mask[index]
        start = int(np.argmax(mask.any(axis=0)))  # columns before it are pads in every remaining row
        self.mask = np.ascontiguousarray(mask[:, start:])
        self.past = self.backend.take(self.past, index, start)

    def prompt_logits(self, prompt: list[int]) -> np.ndarray:
        return self.backend.logits(prompt)


def _pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    return np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))


class OnnxCache:
    """``CacheBackend`` of an exported KV-cache graph under onnxruntime: the cache is numpy arrays.

    Where the file extends the cache in place (``OnnxGPT.in_place``) a call's cache is an ``InPlaceKV``,
    so decode steps copy nothing; the reshapes below (joining and leaving) read its arrays and return
    new ones, which the next call moves into a buffer with room again.
    """

    def __init__(self, model: OnnxGPT) -> None:
        self.model = model
        self.vocab_size = model.vocab_size
        self.block_size = model.block_size

    def run(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | InPlaceKV | None
            ) -> tuple[np.ndarray, list[np.ndarray] | InPlaceKV]:
        return self.model.decode_step(ids, mask, past)

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.model.logits([ids])[0]

    def left_pad(self, past: list[np.ndarray] | InPlaceKV, width: int) -> list[np.ndarray]:
        return [np.pad(p, ((0, 0), (0, 0), (width - p.shape[2], 0), (0, 0))) if p.shape[2] < width else p
                for p in _arrays(past)]

    def concat(self, first: list[np.ndarray] | InPlaceKV, second: list[np.ndarray] | InPlaceKV) -> list[np.ndarray]:
        return [np.concatenate((a, b)) for a, b in zip(_arrays(first), _arrays(second), strict=True)]

    def take(self, past: list[np.ndarray] | InPlaceKV, rows: np.ndarray, start: int) -> list[np.ndarray]:
        return [np.ascontiguousarray(p[rows, :, start:]) for p in _arrays(past)]

    def repeat(self, past: list[np.ndarray] | InPlaceKV, copies: np.ndarray) -> list[np.ndarray]:
        return [np.repeat(p, copies, axis=0) for p in _arrays(past)]


def _arrays(past: list[np.ndarray] | InPlaceKV) -> list[np.ndarray]:
    return past.arrays if isinstance(past, InPlaceKV) else past


class FullSequenceBatch:
    """A ``BatchEngine`` over an export without KV cache: each row is recomputed from its own tokens
    every step (correct, not fast; export with the KV cache to serve many clients)."""

    def __init__(self, model: OnnxGPT) -> None:
        self.model = model
        self.vocab_size = model.vocab_size
        self.block_size = model.block_size
        self.sequences: list[list[int]] = []

    def add(self, prompts: list[list[int]], copies: Sequence[int]) -> np.ndarray:
        self.sequences += [list(p) for p, c in zip(prompts, copies, strict=True) for _ in range(c)]
        return np.repeat(np.concatenate([self._last_logits(p) for p in prompts]), copies, axis=0)

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        for row, token in zip(self.sequences, tokens, strict=True):
            row.append(int(token))
        return np.concatenate([self._last_logits(row) for row in self.sequences])

    def keep(self, rows: Sequence[int]) -> None:
        self.sequences = [self.sequences[i] for i in rows]

    def prompt_logits(self, prompt: list[int]) -> np.ndarray:
        return self.model.logits([prompt])[0]

    def _last_logits(self, tokens: list[int]) -> np.ndarray:
        return self.model.run(np.array([tokens], dtype=np.int64), logits_to_keep=1)[0][:, -1]


def onnx_engine(model: OnnxGPT) -> BatchEngine:
    """The batch engine for an exported file: KV-cache graph or full-sequence graph."""
    return KVCacheBatch(OnnxCache(model)) if model.kv_cache else FullSequenceBatch(model)
