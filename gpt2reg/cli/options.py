"""Click option types and options shared by the commands, defined once here: number types, the model's
options (``build``, ``train``, ``compare``) and training's (``train``, ``compare``).

Every numeric option of every command uses ``click.IntRange`` or ``Real`` (a test walks the
commands to keep it so): ``nan``, ``inf`` and out-of-range values are refused as the option is parsed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click


class Real(click.FloatRange):
    """A finite float in a range: click's ``FloatRange`` lets ``nan`` (and ``inf`` where unbounded) through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# Seeds feed torch.manual_seed and numpy's SeedSequence: non-negative, at most 64 bits.
SEED = click.IntRange(0, 2**63 - 1)
POSITIVE = click.IntRange(1)

# CLI option -> config field; None means "not given" so presets keep their values.
ARCH_OPTIONS = {
    "pos": "pos",
    "act": "act",
    "norm": "norm",
    "n_layer": "n_layer",
    "n_head": "n_head",
    "n_embd": "n_embd",
    "block_size": "block_size",
    "vocab_size": "vocab_size",
    "mlp_ratio": "mlp_ratio",
    "dropout": "dropout",
    "bias": "bias",
}

_DECORATORS = (
    click.option("--preset", default="gpt2", show_default=True, help="gpt2, gpt2-medium, gpt2-large or gpt2-xl."),
    click.option("--pos", help="Positional encoding (see `gpt2reg components`).  [default: learned]"),
    click.option("--act", help="MLP activation.  [default: gelu_tanh]"),
    click.option("--norm", help="Normalization layer.  [default: layernorm]"),
    click.option("--n-layer", type=POSITIVE, help="Number of blocks."),
    click.option("--n-head", type=POSITIVE, help="Attention heads per block."),
    click.option("--n-embd", type=POSITIVE, help="Embedding width."),
    click.option("--block-size", type=POSITIVE, help="Context length in tokens."),
    click.option("--vocab-size", type=POSITIVE, help="Vocabulary size."),
    click.option("--mlp-ratio", type=Real(min=0, min_open=True), help="MLP hidden width / n_embd."),
    click.option("--dropout", type=Real(0, 1, max_open=True), help="Dropout probability."),
    click.option("--bias/--no-bias", default=None, help="Biases in linear layers and LayerNorm."),
)


def architecture_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--preset`` and the architecture options (passed as keyword arguments named as in ARCH_OPTIONS)."""
    for decorator in reversed(_DECORATORS):
        func = decorator(func)
    return func


def given_architecture(arch: dict[str, Any]) -> dict[str, Any]:
    """The config fields the user set explicitly (options left at None keep the preset's values)."""
    return {field: arch[opt] for opt, field in ARCH_OPTIONS.items() if arch.get(opt) is not None}


# Option -> TrainConfig field, for options whose value can be taken from a resumed run's run.json.
TRAIN_FIELDS = (
    "data", "max_steps", "batch_size", "grad_accum", "seq_len", "lr", "min_lr", "warmup_steps", "weight_decay",
    "grad_clip", "eval_interval", "eval_batches", "val_fraction", "checkpoint_interval", "keep_checkpoints",
    "seed", "dtype", "device", "compile", "sample_tokens", "sample_prompt",
)


def _default(name: str):
    """The default of a TrainConfig field, so CLI and API defaults are one and the same."""
    import dataclasses

    from ..training import config as train_config

    return {f.name: f.default for f in dataclasses.fields(train_config.TrainConfig)}[name]


_TRAINING_DECORATORS = (
    click.option("--max-steps", type=click.IntRange(1), default=_default("max_steps"), show_default=True),
    click.option("--batch-size", type=click.IntRange(1), default=_default("batch_size"), show_default=True,
                 help="Sequences per micro-batch, per process."),
    click.option("--grad-accum", type=click.IntRange(1, 65536), default=_default("grad_accum"), show_default=True,
                 help="Micro-batches per optimizer step."),
    click.option("--seq-len", type=click.IntRange(1), help="Training window in tokens.  [default: the model's block size]"),
    click.option("--lr", type=Real(min=0, min_open=True), default=_default("lr"), show_default=True,
                 help="Peak learning rate."),
    click.option("--min-lr", type=Real(min=0), help="Learning rate at the end of the cosine.  [default: lr/10]"),
    click.option("--warmup-steps", type=click.IntRange(0), default=_default("warmup_steps"), show_default=True),
    click.option("--weight-decay", type=Real(min=0), default=_default("weight_decay"), show_default=True,
                 help="AdamW weight decay, on matrices only."),
    click.option("--grad-clip", type=Real(min=0), default=_default("grad_clip"), show_default=True,
                 help="Max global gradient norm (0: off)."),
    click.option("--eval-interval", type=click.IntRange(1), default=_default("eval_interval"), show_default=True,
                 help="Validate, plot and sample every N steps."),
    click.option("--eval-batches", type=click.IntRange(1), default=_default("eval_batches"), show_default=True,
                 help="Validation windows = this x batch size, at most."),
    click.option("--val-fraction", type=Real(0, 1, max_open=True), default=_default("val_fraction"),
                 show_default=True, help="Held-out tail of the corpus."),
    click.option("--checkpoint-interval", type=click.IntRange(1), help="Checkpoint every N steps.  [default: eval interval]"),
    click.option("--keep-checkpoints", type=click.IntRange(1), default=_default("keep_checkpoints"), show_default=True),
    click.option("--seed", type=SEED, default=_default("seed"), show_default=True, help="Initialisation and data order."),
    click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default=_default("dtype"),
                 show_default=True,
                 help="auto: bf16 autocast where the hardware computes it natively (CUDA, AVX512-BF16/AMX CPUs)."),
    click.option("--device", default=_default("device"), show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (faster steps after warm-up)."),
    click.option("--sample-tokens", type=click.IntRange(0), default=_default("sample_tokens"), show_default=True,
                 help="Tokens sampled at each evaluation (0: none)."),
    click.option("--sample-prompt", default=_default("sample_prompt"), help="Prompt for the samples.  [default: none]"),
)


def training_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the training options (``--max-steps`` ... ``--sample-prompt``; ``--compile`` arrives as ``compile_``)."""
    for decorator in reversed(_TRAINING_DECORATORS):
        func = decorator(func)
    return func
