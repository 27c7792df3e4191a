"""Click options shared by commands that assemble a model (``build``, ``train``): defined once here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

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
    click.option("--n-layer", type=int, help="Number of blocks."),
    click.option("--n-head", type=int, help="Attention heads per block."),
    click.option("--n-embd", type=int, help="Embedding width."),
    click.option("--block-size", type=int, help="Context length in tokens."),
    click.option("--vocab-size", type=int, help="Vocabulary size."),
    click.option("--mlp-ratio", type=float, help="MLP hidden width / n_embd."),
    click.option("--dropout", type=float, help="Dropout probability."),
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
