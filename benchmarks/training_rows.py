"""Training-step throughput: gpt2reg beside Hugging Face's GPT2LMHeadModel at the same config and batch.

A step is what ``gpt2reg train`` does: forward, loss, backward, gradient clipping, fused/foreach AdamW
step. Both engines get the same random token batches, the same optimizer settings and, on CUDA, the
same bf16 autocast. On a GPU whose peak is known the model FLOPs utilisation is reported too:
FLOPs per token = 6 N + 12 L T d (PaLM's accounting: N = parameters that take part in matmuls, the
learned position table excluded, the tied head counted once), MFU = FLOPs/token x tokens/s / peak.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.workload import best_time
from gpt2reg.accel.device import autocast, resolve_device, resolve_dtype
from gpt2reg.config import GPTConfig
from gpt2reg.training.optim import make_optimizer

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; MFU is reported only for these.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of a GPT of ``config`` on windows of ``seq_len``."""
    matmul_params = config.n_layer * (
        4 * config.n_embd**2 + (3 if config.act in ("swiglu", "geglu") else 2) * config.n_embd * config.hidden_size
    ) + config.vocab_size * config.n_embd
    return 6 * matmul_params + 12 * config.n_layer * seq_len * config.n_embd


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def _best_step(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds of the fastest of ``steps`` timed steps: a burst of load elsewhere slows one step, not the figure."""
    for _ in range(warmup):
        step()
    return best_time(step, steps, torch.cuda.synchronize if device.type == "cuda" else (lambda: None))


def measure_training(engine: str, config: GPTConfig, *, batch_size: int = 4, seq_len: int = 256, steps: int = 5,
                     warmup: int = 2, device: str = "auto", dtype: str = "auto", compile: bool = False,
                     seed: int = 0) -> dict[str, Any]:
    """Tokens/s (and MFU on a known GPU) of the best of ``steps`` timed training steps of ``engine``.

    ``engine`` is ``gpt2reg`` or ``transformers`` (GPT2LMHeadModel; only configs it can express:
    learned positions, LayerNorm, GELU variants).
    """
    dev = resolve_device(device)
    amp = resolve_dtype(dtype, dev)
    torch.manual_seed(seed)
    if engine == "gpt2reg":
        from gpt2reg.model import GPT
        from gpt2reg.training.loop import _WithLoss

        model: nn.Module = GPT(config)
        step_module: nn.Module = _WithLoss(model)  # what `gpt2reg train` compiles: model and loss as one graph
        loss_of = lambda m, x, y: m(x, y)  # noqa: E731
    elif engine == "transformers":
        model = step_module = _hf_model(config)
        loss_of = lambda m, x, y: m(input_ids=x, labels=y, use_cache=False).loss  # noqa: E731
    else:
        raise ValueError(f"unknown engine {engine!r}")
    model.to(dev).train()
    optimizer = make_optimizer(model, 1e-4, 0.1, dev)
    forward = torch.compile(step_module) if compile else step_module
    gen = torch.Generator().manual_seed(seed)
    vocab = min(config.vocab_size, 50257)
    batches = [torch.randint(0, vocab, (batch_size, seq_len + 1), generator=gen).to(dev) for _ in range(2)]
    counter = [0]

    def step() -> None:
        batch = batches[counter[0] % 2]
        counter[0] += 1
        with autocast(dev, amp):
            loss = loss_of(forward, batch[:, :-1], batch[:, 1:] if engine == "gpt2reg" else batch[:, :-1])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _best_step(step, warmup, steps, dev)
    tokens_per_s = batch_size * seq_len / seconds
    result: dict[str, Any] = {"train_tps": tokens_per_s, "train_step_s": seconds}
    peak = peak_flops(dev)
    if peak is not None:
        result["mfu"] = 100.0 * flops_per_token(config, seq_len) * tokens_per_s / peak
    return result


def _hf_model(config: GPTConfig) -> nn.Module:
    """GPT2LMHeadModel with the same shape; refuses what it cannot express."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    from gpt2reg.checkpoints import hf_config

    logging.set_verbosity_error()
    hf = GPT2Config(**hf_config(config))  # CheckpointError for what GPT2LMHeadModel cannot express
    return GPT2LMHeadModel(hf)


# -- rows of `gpt2reg bench` (gpt2reg/bench.py runs each in its own process) ---------------------------
def _row(engine: str, spec: Any) -> dict[str, float]:
    from benchmarks.workload import torch_threads
    from gpt2reg.checkpoints import load_model

    threads = torch_threads(spec)
    config = load_model(spec.model).config.replace(dropout=0.0)
    seq_len = min(spec.train_seq, config.block_size)
    return {**measure_training(engine, config, batch_size=spec.train_batch, seq_len=seq_len, steps=spec.repeats,
                               device=spec.device, compile=spec.train_compile, seed=spec.seed), "threads": threads}


def gpt2reg_train_row(spec: Any) -> dict[str, float]:
    """A training step of gpt2reg's model at the config of ``spec.model``."""
    return _row("gpt2reg", spec)


def transformers_train_row(spec: Any) -> dict[str, float]:
    """The same training step for GPT2LMHeadModel at the same config."""
    return _row("transformers", spec)
