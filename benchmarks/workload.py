"""What every row shares: the workload spec, its random prompt, timing, thread count and a Hugging Face copy
of the weights. Its own module so that rows (``onnx_rows``, ``llamacpp``, ...) and ``bench`` import it, not
each other."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2reg.errors import InputError


@dataclass(frozen=True)
class BenchSpec:
    """What every row measures. ``hf_dir`` holds the same weights as ``model`` in Hugging Face format."""

    model: str
    hf_dir: str | None = None
    prompt_tokens: int = 32
    new_tokens: int = 128
    prefill_tokens: int = 1024
    repeats: int = 3  # timed runs inside one row process; the best counts
    device: str = "cpu"
    seed: int = 0
    train_batch: int = 4  # the training rows: sequences per step
    train_seq: int = 256  # and their length (capped at the model's context)
    train_compile: bool = False
    llama_cpp: str | None = None  # a llama.cpp build for the llama.cpp rows (benchmarks.llamacpp)
    threads: int | None = None  # every row's (and the bandwidth probe's) thread count; None: each engine's default


def torch_threads(spec: BenchSpec) -> int:
    """Set torch's intra-op threads to ``spec.threads`` (when given) in this row's process; the count in use."""
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    return torch.get_num_threads()


def hf_copy(model: str, directory: Path) -> tuple[str | None, str]:
    """A Hugging Face GPT-2 directory with ``model``'s weights: the model itself if it is one, else a copy."""
    path = Path(model)
    if (path / "config.json").is_file():
        return str(path), ""
    from gpt2reg.checkpoints import hf_config, hf_state_dict, load_model
    from gpt2reg.errors import CheckpointError

    gpt = load_model(model)
    try:
        config = hf_config(gpt.config.replace(dropout=0.0))
    except CheckpointError as exc:
        return None, str(exc)
    from safetensors.torch import save_file

    tensors = hf_state_dict(gpt)
    from gpt2reg.files import staged

    with staged(directory, what="the transformers row's copy of the model", option="set TMPDIR") as stage:
        save_file(tensors, str(stage.path("model.safetensors")), metadata={"format": "pt"})
        stage.path("config.json").write_text(json.dumps(config, indent=2))
    return str(directory), ""


def best_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def workload(spec: BenchSpec, vocab_size: int) -> tuple[list[int], list[int]]:
    """Random token ids (seeded): the decode prompt and the prefill sequence."""
    import random

    rng = random.Random(spec.seed)
    vocab = min(vocab_size, 50257)
    prompt = [rng.randrange(vocab) for _ in range(spec.prompt_tokens)]
    return prompt, [rng.randrange(vocab) for _ in range(spec.prefill_tokens)]


def check_context(spec: BenchSpec, block_size: int) -> None:
    if spec.prefill_tokens > block_size or spec.prompt_tokens + spec.new_tokens > block_size:
        raise InputError(
            f"the workload does not fit the model's context of {block_size} tokens "
            f"(prefill {spec.prefill_tokens}, prompt {spec.prompt_tokens} + {spec.new_tokens} new)"
        )
