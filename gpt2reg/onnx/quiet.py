"""Exporting and quantizing without their chatter: torch's exporter and onnxruntime's quantizers log and
warn about things that are not the user's business (axis renames, torchvision absent, deprecations,
MatMulNBits' advice on every node)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Errors only from torch.onnx and the root logger (where onnxruntime's quantizers log), no warnings."""
    loggers = [logging.getLogger("torch.onnx"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
