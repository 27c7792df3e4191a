"""Perplexity of a model on a text, with a sliding window that scores every token exactly once.

The text is tokenized as for training (documents followed by ``<|endoftext|>``) and preceded by one
``<|endoftext|>`` that only serves as context, so the first real token is scored too. Windows of
``seq_len`` tokens start every ``stride`` tokens (default ``seq_len // 2``); each window scores only
the targets the previous window did not reach, so every target after the first ``seq_len`` is
predicted from at least ``seq_len - stride`` tokens of context. ``stride = seq_len`` gives
non-overlapping chunks (fastest, least context); ``stride = 1`` gives the most context (slowest).
Evaluation runs in float32 unless asked otherwise: it is a measurement, and cheap next to training.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import ConfigError, InputError
from ..generation import NON_FINITE
from ..memory import check_fits
from ..model import GPT
from ..tokenizer import EOT_ID
from .data import read_documents, tokenize_documents
from .device import autocast, resolve_device, resolve_dtype


def sliding_windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) per window over ``n_tokens`` tokens, where inputs are
    ``tokens[start:end]``, targets ``tokens[start+1:end+1]``, and targets from ``first_scored`` on
    (an index into the token array) are scored. Targets 1 .. n_tokens-1 are each scored once."""
    windows, scored_to = [], 1  # every target index below scored_to has been scored
    last = n_tokens - 1  # the last target index
    start = 0
    while scored_to <= last:
        end = min(start + seq_len, last)
        windows.append((start, end, scored_to))
        scored_to = end + 1  # the next window starts stride later, so it scores `stride` new targets
        start += stride
    return windows


@torch.no_grad()
def evaluate_tokens(model: GPT, tokens: np.ndarray | list[int], *, seq_len: int | None = None,
                    stride: int | None = None, batch_size: int = 8, dtype: str = "float32",
                    progress: bool = False) -> dict[str, Any]:
    """Mean cross-entropy of ``tokens[1:]`` given what precedes them (see the module docstring)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    seq_len = seq_len or model.config.block_size
    stride = stride or max(1, seq_len // 2)
    if not 1 <= seq_len <= model.config.block_size:
        raise ConfigError(f"seq_len={seq_len}: must be between 1 and the model's context ({model.config.block_size})")
    if not 1 <= stride <= seq_len:
        raise ConfigError(f"stride={stride}: must be between 1 and seq_len ({seq_len})")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be at least 1")
    if tokens.size < 2:
        raise ConfigError("nothing to score: the text has no tokens")
    if tokens.max() >= model.config.vocab_size:
        raise ConfigError(f"token id {tokens.max()} is outside the model's vocabulary (vocab_size="
                          f"{model.config.vocab_size}); this model cannot read GPT-2 tokens")
    device = next(model.parameters()).device
    amp = resolve_dtype(dtype, device)
    windows = sliding_windows(tokens.size, seq_len, stride)
    width = min(seq_len, tokens.size - 1)
    if device.type == "cpu":  # logits (with their float copy and softmax) and one layer's activations
        c, rows = model.config, min(batch_size, len(windows))
        check_fits(rows * width * 4 * (3 * c.vocab_size + 8 * c.n_embd),
                   f"scoring {rows:,} windows of {width} tokens at once", "lower --batch-size or --seq-len")
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc="eval", unit="batch", disable=not progress):
        group = windows[i : i + batch_size]
        x = np.zeros((len(group), width), dtype=np.int64)  # a short last window is padded at its end
        y = np.full((len(group), width), -100, dtype=np.int64)  # -100: not scored
        for row, (start, end, first) in enumerate(group):
            x[row, : end - start] = tokens[start:end]
            y[row, first - start - 1 : end - start] = tokens[first : end + 1]
        x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast(device, amp):
            logits = model(x_t)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y_t.flatten(), ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((y_t != -100).sum())
    model.train(was_training)
    mean = total / count
    if not math.isfinite(mean):
        raise InputError(NON_FINITE)
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": count, "windows": len(windows),
            "seq_len": seq_len, "stride": stride}


def evaluate(model: GPT | str | os.PathLike, data: str | os.PathLike, *, seq_len: int | None = None,
             stride: int | None = None, batch_size: int = 8, device: str = "auto", dtype: str = "float32",
             progress: bool = False) -> dict[str, Any]:
    """Loss and perplexity of ``model`` (a GPT or any checkpoint the loader accepts) on a text file or folder."""
    tokens = np.concatenate([[EOT_ID], tokenize_documents(read_documents(data))]).astype(np.int64)
    if not isinstance(model, GPT):
        from ..checkpoints import load_model

        model = load_model(model)
    model.to(resolve_device(device))
    return evaluate_tokens(model, tokens, seq_len=seq_len, stride=stride, batch_size=batch_size, dtype=dtype,
                           progress=progress)
