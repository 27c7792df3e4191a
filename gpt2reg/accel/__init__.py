"""Opt-in machine tuning, in one place: the caller turns it on, the library never does it behind its back.

``tune(model)`` is the one call (eval mode, weights in huge pages, the fastest linear kernels); the
modules under it: ``machine`` reads facts about the CPU and its memory (torch-free, shared with
``gpt2reg.ort``); ``kernels`` picks the fastest linear kernel per layer shape; ``hugepages`` moves
weights into 2 MiB pages; ``device`` resolves training/eval devices and precisions.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``tune`` imported on first use (PEP 562): ``gpt2reg.accel.machine`` stays importable without torch."""
    if name == "tune":
        from .tuning import tune

        return tune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["tune"]
