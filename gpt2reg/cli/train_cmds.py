"""``gpt2reg train`` and ``gpt2reg eval``: train on a user's text (resumable, torchrun-ready), measure perplexity."""

from __future__ import annotations

import json
import os

import click

from .options import TRAIN_FIELDS, architecture_options, given_architecture, training_options


@click.command()
@click.option("--data", type=click.Path(), help="A text file or a folder of them (UTF-8).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl, loss.png, samples.txt, model/.")
@architecture_options
@click.option("--init", metavar="MODEL", help="Start from a checkpoint the loader accepts (fine-tuning), e.g. gpt2.")
@training_options
@click.option("--resume", is_flag=True, help="Continue the run in the output folder from its newest checkpoint.")
@click.option("--no-progress", is_flag=True, help="No progress bar (metrics.jsonl still records every step).")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@click.pass_context
def train(ctx, out_dir, preset, init, resume, no_progress, as_json, compile_, **options) -> None:
    """Train a model on your text, or fine-tune one with --init.

    \b
    gpt2reg train --data poems.txt --pos rope --n-layer 6 --n-embd 384 --n-head 6 \\
        --block-size 256 --max-steps 2000 -o runs/poems
    gpt2reg train -o runs/poems --resume                        # after a kill or Ctrl-C
    torchrun --nproc_per_node 2 -m gpt2reg train --data poems.txt -o runs/ddp
    """
    from ..config import GPTConfig
    from ..training import TrainConfig, resume_config
    from ..training import train as run_training

    arch = given_architecture(options)
    options["compile"] = compile_
    fields = {name: options[name] for name in TRAIN_FIELDS}
    if resume:
        from ..config import PRESETS
        from ..training import resume_conflicts

        param_names = {"compile": "compile_"}
        given = {name: value for name, value in fields.items()
                 if ctx.get_parameter_source(param_names.get(name, name)) != click.core.ParameterSource.DEFAULT}
        preset_given = ctx.get_parameter_source("preset") != click.core.ParameterSource.DEFAULT
        if preset_given:
            GPTConfig.from_preset(preset)  # an unknown preset is an error here too
        # Options equal to the saved ones are accepted (the first command, re-run with --resume added).
        resume_conflicts(out_dir, model={**(PRESETS[preset] if preset_given else {}), **arch},
                         init=init, **{k: v for k, v in given.items() if k == "data"})
        given.pop("data", None)
        config = resume_config(out_dir, **given, progress=not no_progress)
        model = None
    else:
        if not options["data"]:
            raise click.UsageError("--data PATH is required (a text file or a folder of them)")
        if init and arch:
            raise click.UsageError(f"--init keeps the checkpoint's architecture; drop {', '.join(sorted(arch))}")
        config = TrainConfig(out_dir=out_dir, progress=not no_progress, **fields)
        model = init or GPTConfig.from_preset(preset, **arch)
    result = run_training(config, model, resume=resume)
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif result["diverged"]:
        raise click.ClickException(f"diverged at step {result['steps']}: the loss is not finite; lower --lr, "
                                   f"raise --warmup-steps or keep --grad-clip on (metrics: {result['run_dir']})")
    else:
        state = "stopped at" if result["interrupted"] else "finished"
        line = f"{state} step {result['steps']}"
        if result["loss"] is not None:
            line += f": train loss {result['loss']:.4f}"
        if result["val_loss"] is not None:
            line += f", validation loss {result['val_loss']:.4f} (unigram baseline {result['unigram_val_loss']:.4f})"
        click.echo(line)
        click.echo(f"model: {result['model_dir']}   metrics, plot, samples: {result['run_dir']}")
    if result["diverged"]:
        ctx.exit(1)
    if result["interrupted"]:
        click.echo(f"continue with: gpt2reg train -o {out_dir} --resume", err=True)
        ctx.exit(130)


@click.command("eval")
@click.argument("model", metavar="MODEL|FILE.onnx")
@click.option("--data", required=True, type=click.Path(), help="A text file or a folder of them (UTF-8).")
@click.option("--seq-len", type=click.IntRange(1), help="Window length.  [default: the model's block size]")
@click.option("--stride", type=click.IntRange(1), help="Tokens between window starts.  [default: seq-len / 2]")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Windows per forward pass.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N (for an .onnx file: its execution provider).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="float32", show_default=True,
              help="auto: bf16 autocast where the hardware computes it natively (torch models).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def eval_(model, data, seq_len, stride, batch_size, device, dtype, no_progress, as_json) -> None:
    """Mean token cross-entropy and perplexity of MODEL on a text (sliding window, each token scored once).

    An exported .onnx file is scored the same way through the torch-free runtime, so fp32, int8 and
    int4 exports compare directly with the torch model.
    """
    from ..training import evaluate

    result = evaluate(model, data, seq_len=seq_len, stride=stride, batch_size=batch_size, device=device,
                      dtype=dtype, progress=not no_progress)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
                   f"({result['tokens']:,} tokens, window {result['seq_len']}, stride {result['stride']})")
