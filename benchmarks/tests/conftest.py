"""The benchmarks' tests run tiny models and a small bandwidth probe; kernel decisions stay in memory."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("GPT2REG_KERNEL_CACHE", "off")
os.environ.setdefault("GPT2REG_BENCH_PROBE_MB", "16")  # the bandwidth probe: tiny runs need no 512 MB read
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
