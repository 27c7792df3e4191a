"""The settings of a training run (the model's own settings live in GPTConfig)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..numbers import check_number

# Micro-batches per step: a bound so that a typo (1e11) is refused instead of a first step that never ends.
MAX_GRAD_ACCUM = 65536


@dataclass
class TrainConfig:
    """Everything that decides what a run does, saved in ``RUN_DIR/run.json``.

    Tokens per optimizer step = ``batch_size * seq_len * grad_accum * world_size``.
    """

    data: str | None = None  # a text file or a folder of them
    out_dir: str = "run"
    max_steps: int = 1000
    batch_size: int = 8  # sequences per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int | None = None  # window length; default the model's block_size
    lr: float = 6e-4
    min_lr: float | None = None  # end of the cosine; default lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices (linear and embedding weights) only
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    eval_interval: int = 100  # validate, plot and sample every this many steps (and at the end)
    eval_batches: int = 20  # validation windows = eval_batches * batch_size at most
    val_fraction: float = 0.1
    checkpoint_interval: int | None = None  # default eval_interval
    keep_checkpoints: int = 2
    seed: int = 0
    dtype: str = "auto"  # auto (bf16 autocast where native: CUDA, AVX512-BF16/AMX CPUs), float32, bfloat16
    device: str = "auto"
    compile: bool = False
    sample_tokens: int = 64  # tokens sampled at each evaluation; 0 turns samples off
    sample_prompt: str = ""  # empty: start from <|endoftext|>
    progress: bool = True

    def __post_init__(self) -> None:
        def check(name: str, low: float | None = None, high: float | None = None, **kw: Any) -> None:
            check_number(name, getattr(self, name), low, high, error=ConfigError, **kw)

        for name in ("max_steps", "batch_size", "eval_interval", "eval_batches", "keep_checkpoints"):
            check(name, 1, integer=True)
        check("grad_accum", 1, MAX_GRAD_ACCUM, integer=True)
        for name in ("seq_len", "checkpoint_interval"):
            if getattr(self, name) is not None:
                check(name, 1, integer=True)
        for name in ("warmup_steps", "sample_tokens", "seed"):
            check(name, 0, integer=True)
        check("lr", 0, low_open=True)
        if self.min_lr is not None:
            check("min_lr", 0, self.lr)
        for name in ("weight_decay", "grad_clip"):
            check(name, 0)
        check("val_fraction", 0, 1, high_open=True)
        for name in ("dtype", "device", "sample_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected a string")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def checkpoint_every(self) -> int:
        return self.checkpoint_interval or self.eval_interval

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
