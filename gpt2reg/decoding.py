"""One batch-decoding interface, driven by ``generate`` and by the server, for torch and onnxruntime alike.

An ``Engine`` holds rows being decoded together: ``add`` prefills prompts (each ``copies`` times) and
appends their rows, ``step`` appends one token to every row, ``keep`` drops rows (a finished sequence,
a request that left). ``generate`` adds its prompts once and drops rows as they finish; the server's
continuous batcher adds and drops between any two steps.

An engine runs a model through its ``Backend``: the model calls and the cache reshapes on one
framework's arrays (torch tensors: ``gpt2reg.torch_backend``; numpy under onnxruntime:
``gpt2reg.ort.runtime``). ``KVCacheEngine`` keeps every row left-padded to one width: the KV cache
is (rows, heads, width, head_dim) and ``mask`` (rows, width) marks each row's real positions, so
position ids (the count of real tokens before each one) and attention ignore the pads. Joining rows
are prefilled together, then their cache and mask are left-padded to the batch's width (or the
batch's to theirs) and appended; when rows leave, leading columns no row uses any more are cut (the
backend may keep them, masked, until cutting is worth its copy), so the width stays close to the
longest row and never exceeds the context. ``FullSequenceEngine`` (a model
without a KV cache) recomputes each row from its own tokens every step: correct, not fast.

Logits cross as numpy float32 arrays (rows, vocab). This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .tokenizer import EOT_ID


class Engine(Protocol):
    """Rows decoded together, numbered in the order they were added and kept."""

    vocab_size: int
    block_size: int
    cache_bytes_per_token: int  # host memory the cache takes per row and token (0: not on the host)

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
        """The logits (len(prompt), vocab) at every position of ``prompt`` alone, outside the batch."""
        ...


class Backend(Protocol):
    """A model's calls for an engine, and the reshapes of its KV cache (whatever object that is) that
    joining and leaving rows need."""

    vocab_size: int
    block_size: int
    cache_bytes_per_token: int
    kv_cache: bool  # False: ``logits`` only (a graph exported without the cache)

    def logits(self, ids: list[int], keep: int = 0) -> np.ndarray:
        """The logits (kept, vocab) of one unpadded sequence without a cache: the last ``keep`` positions (0: all)."""
        ...

    def run(self, ids: np.ndarray, mask: np.ndarray, past: Any) -> tuple[np.ndarray, Any]:
        """Logits (rows, vocab) after the last of ``ids`` (rows, seq), and the cache extended by them;
        ``mask`` (rows, past + seq) marks left pads with 0."""
        ...

    def join(self, first: Any, second: Any, width: int) -> Any:
        """Rows of ``first`` then rows of ``second``, each cache left-padded with zeros to ``width`` positions."""
        ...

    def take(self, past: Any, rows: np.ndarray, start: int) -> tuple[Any, int]:
        """The given rows, positions from ``start`` on (``past`` may be reused), and the start it cut at:
        ``start``, or 0 where cutting would copy more than the unused columns cost (they stay masked)."""
        ...

    def repeat(self, past: Any, copies: np.ndarray) -> Any:
        """Row ``i`` ``copies[i]`` times in a row."""
        ...


def left_padded(prompts: list[list[int]], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, both (batch, longest prompt), for prompts left-padded to one length."""
    width = max(len(p) for p in prompts)
    pad_id = EOT_ID if EOT_ID < vocab_size else 0  # any id: masked out
    ids = np.array([[pad_id] * (width - len(p)) + p for p in prompts], dtype=np.int64)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=np.int64)
    return ids, mask


class KVCacheEngine:
    """An ``Engine`` over a KV-cache model (see the module docstring for the layout)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.vocab_size = backend.vocab_size
        self.block_size = backend.block_size
        self.cache_bytes_per_token = backend.cache_bytes_per_token
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
        self.past = self.backend.join(self.past, past, width)
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
        self.past, start = self.backend.take(self.past, index, start)
        self.mask = np.ascontiguousarray(mask[:, start:])

    def prompt_logits(self, prompt: list[int]) -> np.ndarray:
        return self.backend.logits(prompt)


def _pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    return np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))


class FullSequenceEngine:
    """An ``Engine`` over a model without KV cache: each row is recomputed from its own tokens every
    step (correct, not fast: the reference the cached path is tested against, and what a graph exported
    without the cache can do)."""

    cache_bytes_per_token = 0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.vocab_size = backend.vocab_size
        self.block_size = backend.block_size
        self.sequences: list[list[int]] = []

    def add(self, prompts: list[list[int]], copies: Sequence[int]) -> np.ndarray:
        self.sequences += [list(p) for p, c in zip(prompts, copies, strict=True) for _ in range(c)]
        return np.repeat(np.stack([self.backend.logits(p, 1)[-1] for p in prompts]), copies, axis=0)

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        for row, token in zip(self.sequences, tokens, strict=True):
            row.append(int(token))
        return np.stack([self.backend.logits(row, 1)[-1] for row in self.sequences])

    def keep(self, rows: Sequence[int]) -> None:
        self.sequences = [self.sequences[i] for i in rows]

    def prompt_logits(self, prompt: list[int]) -> np.ndarray:
        return self.backend.logits(prompt)


def engine(backend: Backend) -> Engine:
    """The engine for ``backend``: rows over a KV cache, or recomputed (a model without the cache)."""
    return KVCacheEngine(backend) if backend.kv_cache else FullSequenceEngine(backend)


__all__ = ["Backend", "Engine", "FullSequenceEngine", "KVCacheEngine", "engine", "left_padded"]
