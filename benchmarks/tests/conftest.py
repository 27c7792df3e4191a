"""The benchmarks' tests run tiny models; kernel decisions stay in memory, one thread per xdist worker."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("GPT2REG_KERNEL_CACHE", "off")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
