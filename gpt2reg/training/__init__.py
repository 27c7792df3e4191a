"""Training and evaluation: ``train`` a model on text (resumable, DDP under torchrun), ``evaluate`` perplexity.

    config.py       TrainConfig (torch-free: the CLI reads its defaults)
    data.py         corpus -> cached uint16 tokens, random windows, validation split
    optim.py        AdamW groups, warmup + cosine schedule
    checkpoint.py   atomic training checkpoints, RNG state
    metrics.py      metrics.jsonl and loss.png
    distributed.py  torchrun process groups
    loop.py         the loop itself
    eval.py         sliding-window perplexity
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig

__all__ = ["TrainConfig", "train", "resume_config", "resume_conflicts", "read_run", "evaluate", "evaluate_tokens", "sliding_windows"]

# Imported on first use, so that reading TrainConfig does not import torch.
_LAZY = {"train": "loop", "resume_config": "loop", "resume_conflicts": "loop", "read_run": "loop", "evaluate": "eval",
         "evaluate_tokens": "eval", "sliding_windows": "eval"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gpt2reg.training' has no attribute '{name}'")
