"""Perplexity of a model on a text, with a sliding window that scores every token exactly once.

The text is tokenized as for training (documents followed by ``<|endoftext|>``) and preceded by one
``<|endoftext|>`` that only serves as context, so the first real token is scored too. Windows of
``seq_len`` tokens start every ``stride`` tokens (default ``seq_len // 2``); each window scores only
the targets the previous window did not reach, so every target after the first ``seq_len`` is
predicted from at least ``seq_len - stride`` tokens of context. ``stride = seq_len`` gives
non-overlapping chunks (fastest, least context); ``stride = 1`` gives the most context (slowest).
Evaluation runs in float32 unless asked otherwise: it is a measurement, and cheap next to training.
An exported ``.onnx`` file is scored the same way through ``gpt2reg.ort.runtime`` (torch is not
imported), so its perplexity compares directly with the torch model's (e.g. fp32 vs int8 vs int4).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, InputError
from ..generation import NON_FINITE
from ..memory import check_fits
from ..tokenizer import EOT_ID
from .data import read_documents, tokenize_documents

if TYPE_CHECKING:
    from ..model import GPT
    from ..ort.runtime import OnnxGPT

# (inputs, targets with -100 where not scored) -> (summed cross-entropy, scored count)
BatchLoss = Callable[[np.ndarray, np.ndarray], tuple[float, int]]


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


def _batches(tokens: np.ndarray, windows: list[tuple[int, int, int]], width: int,
             batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Inputs and targets, ``batch_size`` windows at a time; -100 marks targets not scored."""
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        x = np.zeros((len(group), width), dtype=np.int64)  # a short last window is padded at its end
        y = np.full((len(group), width), -100, dtype=np.int64)
        for row, (start, end, first) in enumerate(group):
            x[row, : end - start] = tokens[start:end]
            y[row, first - start - 1 : end - start] = tokens[first : end + 1]
        yield x, y


def _score(batch_loss: BatchLoss, tokens: np.ndarray | list[int], *, block_size: int, vocab_size: int,
           n_embd: int, on_cpu: bool, seq_len: int | None, stride: int | None, batch_size: int,
           progress: bool) -> dict[str, Any]:
    """Mean cross-entropy of ``tokens[1:]`` given what precedes them, whatever computes the logits."""
    tokens = np.asarray(tokens, dtype=np.int64)
    seq_len = seq_len or block_size
    stride = stride or max(1, seq_len // 2)
    if not 1 <= seq_len <= block_size:
        raise ConfigError(f"seq_len={seq_len}: must be between 1 and the model's context ({block_size})")
    if not 1 <= stride <= seq_len:
        raise ConfigError(f"stride={stride}: must be between 1 and seq_len ({seq_len})")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be at least 1")
    if tokens.size < 2:
        raise ConfigError("nothing to score: the text has no tokens")
    if tokens.max() >= vocab_size:
        raise ConfigError(f"token id {tokens.max()} is outside the model's vocabulary (vocab_size="
                          f"{vocab_size}); this model cannot read GPT-2 tokens")
    windows = sliding_windows(tokens.size, seq_len, stride)
    width = min(seq_len, tokens.size - 1)
    if on_cpu:  # logits (with their float copy and softmax) and one layer's activations
        rows = min(batch_size, len(windows))
        check_fits(rows * width * 4 * (3 * vocab_size + 8 * n_embd),
                   f"scoring {rows:,} windows of {width} tokens at once", "lower --batch-size or --seq-len")
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    batches = _batches(tokens, windows, width, batch_size)
    for x, y in tqdm(batches, total=-(-len(windows) // batch_size), desc="eval", unit="batch", disable=not progress):
        loss, n = batch_loss(x, y)
        total, count = total + loss, count + n
    mean = total / count
    if not math.isfinite(mean):
        raise InputError(NON_FINITE)
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": count, "windows": len(windows),
            "seq_len": seq_len, "stride": stride}


def _torch_loss(model: GPT, dtype: str) -> BatchLoss:
    import torch
    from torch.nn import functional as F

    from ..accel.device import autocast, resolve_dtype

    device = next(model.parameters()).device
    amp = resolve_dtype(dtype, device)

    @torch.no_grad()
    def batch_loss(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast(device, amp):
            logits = model(x_t)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y_t.flatten(), ignore_index=-100, reduction="sum")
        return float(loss), int((y_t != -100).sum())

    return batch_loss


def _onnx_loss(model: OnnxGPT) -> BatchLoss:
    """Cross-entropy in numpy (float64) over the scored positions only: no torch in the process."""

    def batch_loss(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        scored = y != -100
        rows = model.logits(x)[scored].astype(np.float64)  # (scored, vocab)
        top = rows.max(-1)
        log_z = np.log(np.exp(rows - top[:, None]).sum(-1)) + top
        return float((log_z - rows[np.arange(len(rows)), y[scored]]).sum()), int(scored.sum())

    return batch_loss


def evaluate_tokens(model: GPT | OnnxGPT, tokens: np.ndarray | list[int], *, seq_len: int | None = None,
                    stride: int | None = None, batch_size: int = 8, dtype: str = "float32",
                    progress: bool = False) -> dict[str, Any]:
    """Mean cross-entropy of ``tokens[1:]`` given what precedes them (see the module docstring).

    ``model`` is a torch ``GPT`` or an exported file opened with ``gpt2reg.ort.runtime.OnnxGPT``; the
    windows and scoring are the same. ``dtype`` (autocast) applies to torch models only.
    """
    from ..ort.runtime import OnnxGPT

    if isinstance(model, OnnxGPT):
        if dtype not in ("float32", "auto"):
            raise ConfigError(f"dtype={dtype}: an ONNX file computes in its own precision; leave dtype at float32")
        return _score(_onnx_loss(model), tokens, block_size=model.block_size, vocab_size=model.vocab_size,
                      n_embd=int(model.config["n_embd"]), on_cpu=model.provider == "CPUExecutionProvider",
                      seq_len=seq_len, stride=stride, batch_size=batch_size, progress=progress)
    was_training = model.training
    model.eval()
    try:
        return _score(_torch_loss(model, dtype), tokens, block_size=model.config.block_size,
                      vocab_size=model.config.vocab_size, n_embd=model.config.n_embd,
                      on_cpu=next(model.parameters()).device.type == "cpu", seq_len=seq_len, stride=stride,
                      batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)


def _onnx_provider(device: str) -> str:
    """The execution provider for ``device``: ``auto``, ``cpu``, or ``cuda`` for ``cuda``/``cuda:N``."""
    if device in ("auto", "cpu"):
        return device
    if device.startswith("cuda"):
        return "cuda"
    raise ConfigError(f"device '{device}': an ONNX file runs on auto, cpu or cuda")


def evaluate(model: GPT | OnnxGPT | str | os.PathLike, data: str | os.PathLike, *, seq_len: int | None = None,
             stride: int | None = None, batch_size: int = 8, device: str = "auto", dtype: str = "float32",
             progress: bool = False) -> dict[str, Any]:
    """Loss and perplexity of ``model`` on a text file or folder.

    ``model`` is a GPT, any checkpoint the loader accepts, or an exported ``.onnx`` file (run by the
    torch-free runtime on ``device``'s execution provider, without importing torch).
    """
    from ..ort.runtime import OnnxGPT

    tokens = np.concatenate([[EOT_ID], tokenize_documents(read_documents(data))]).astype(np.int64)
    if isinstance(model, (str, os.PathLike)) and str(model).endswith(".onnx"):
        model = OnnxGPT(model, provider=_onnx_provider(device))
    elif isinstance(model, (str, os.PathLike)):
        from ..checkpoints import load_model

        model = load_model(model)
    if not isinstance(model, OnnxGPT):  # an OnnxGPT already runs on its provider
        from ..accel.device import resolve_device

        model.to(resolve_device(device))
    return evaluate_tokens(model, tokens, seq_len=seq_len, stride=stride, batch_size=batch_size, dtype=dtype,
                           progress=progress)
