"""Shared fixtures: tiny configs so the suite stays fast; full-size runs only where size matters."""

from __future__ import annotations

import os

import pytest
import torch

from gpt2reg.testing import TINY

# Kernel decisions for tiny test models stay in memory, never in the user's cache (tests of the cache
# point it at a temporary file).
os.environ.setdefault("GPT2REG_KERNEL_CACHE", "off")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: a worker using every core's threads only oversubscribes
    # them (tiny-model tests ran ~6x slower that way).
    torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    from gpt2reg.config import GPTConfig

    return GPTConfig(**TINY)
