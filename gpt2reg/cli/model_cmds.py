"""``gpt2reg build`` and ``gpt2reg info``: assemble, save and describe models."""

from __future__ import annotations

import json

import click

from .options import SEED, architecture_options, given_architecture


def _print_summary(summary: dict, as_json: bool) -> None:
    from ..summary import format_summary

    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@click.command()
@architecture_options
@click.option("--from-pretrained", "pretrained", metavar="PATH_OR_HUB_NAME",
              help="Start from a checkpoint: model dir, HF dir/file, nanoGPT ckpt.pt or hub name.")
@click.option("--seed", type=SEED, help="Seed for a reproducible initialisation.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--force", is_flag=True, help="Write into an existing non-empty directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def build(preset, pretrained, seed, output, force, as_json, **arch) -> None:
    """Assemble a GPT-2 variant from registry components and save it as a model directory."""
    from ..checkpoints import load_model, save_model
    from ..files import check_folder
    from ..model import build_model
    from ..summary import summarize

    given = given_architecture(arch)
    check_folder(output, what="the model", force=force)  # before the (possibly long) build or download
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
