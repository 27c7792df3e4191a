"""``gpt2reg build`` and ``gpt2reg info``: assemble, save and describe models."""

from __future__ import annotations

import json

import click

# CLI option -> config field; None means "not given" so presets keep their values.
_ARCH_OPTIONS = {
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


def _print_summary(summary: dict, as_json: bool) -> None:
    from ..summary import format_summary

    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@click.command()
@click.option("--preset", default="gpt2", show_default=True, help="gpt2, gpt2-medium, gpt2-large or gpt2-xl.")
@click.option("--pos", help="Positional encoding (see `gpt2reg components`).  [default: learned]")
@click.option("--act", help="MLP activation.  [default: gelu_tanh]")
@click.option("--norm", help="Normalization layer.  [default: layernorm]")
@click.option("--n-layer", type=int, help="Number of blocks.")
@click.option("--n-head", type=int, help="Attention heads per block.")
@click.option("--n-embd", type=int, help="Embedding width.")
@click.option("--block-size", type=int, help="Context length in tokens.")
@click.option("--vocab-size", type=int, help="Vocabulary size.")
@click.option("--mlp-ratio", type=float, help="MLP hidden width / n_embd.")
@click.option("--dropout", type=float, help="Dropout probability.")
@click.option("--bias/--no-bias", default=None, help="Biases in linear layers and LayerNorm.")
@click.option("--from-pretrained", "pretrained", metavar="PATH_OR_HUB_NAME",
              help="Start from a checkpoint: model dir, HF dir/file, nanoGPT ckpt.pt or hub name.")
@click.option("--seed", type=int, help="Seed for a reproducible initialisation.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--force", is_flag=True, help="Write into an existing non-empty directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def build(preset, pretrained, seed, output, force, as_json, **arch) -> None:
    """Assemble a GPT-2 variant from registry components and save it as a model directory."""
    from ..checkpoints import load_model, save_model
    from ..model import build_model
    from ..summary import summarize

    given = {field: arch[opt] for opt, field in _ARCH_OPTIONS.items() if arch[opt] is not None}
    if pretrained:
        if given:
            raise click.UsageError(
                f"--from-pretrained keeps the checkpoint's architecture; drop {', '.join(sorted(given))}"
            )
        model = load_model(pretrained)
    else:
        model = build_model(preset=preset, seed=seed, **given)
    directory = save_model(model, output, force=force)
    _print_summary(summarize(model, directory), as_json)


@click.command()
@click.argument("model_dir", metavar="MODEL")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def info(model_dir, as_json) -> None:
    """Describe a saved model (a model directory or any checkpoint the loader accepts)."""
    from pathlib import Path

    from ..checkpoints import load_model
    from ..summary import summarize

    model = load_model(model_dir)
    directory = model_dir if Path(model_dir).is_dir() else None
    _print_summary(summarize(model, directory), as_json)
