"""``gpt2reg generate``: continue prompts with a model, streaming the text as it is produced."""

from __future__ import annotations

import json
import warnings

import click

from .options import SEED, Real

# One run, then the process ends: moving an onnxruntime session into huge pages (gpt2reg.ort.pages)
# pays for itself from about this many decode steps. It cost 0.9-1.9 s at load and saved 2.6-3.8 ms
# a token (124M int8 and fp32, 2-core AMD EPYC VM, README ONNX section); where the kernel has free
# huge pages at hand the move costs ~0.25 s and pays sooner.
HUGE_PAGES_FROM = 512


@click.command()
@click.argument("model", required=False, metavar="MODEL")
@click.option("-p", "--prompt", "prompts", multiple=True, required=True,
              help="Text to continue; repeat for several prompts (decoded together). "
                   "\"<|endoftext|>\" starts an unconditional sample.")
@click.option("-n", "--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens to generate per sample (fewer if it stops).")
@click.option("-t", "--temperature", type=Real(min=0), help="Divide logits by T; 0 is greedy.  [default: 1.0]")
@click.option("--top-k", type=click.IntRange(min=1), help="Sample only from the K most likely tokens.")
@click.option("--top-p", type=Real(0, 1, min_open=True),
              help="Sample only from the most likely tokens holding probability P (nucleus).")
@click.option("--greedy", is_flag=True, help="Always take the most likely token (deterministic).")
@click.option("--seed", type=SEED, help="Seed for reproducible sampling.")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True, help="Samples per prompt.")
@click.option("--stop", multiple=True, help="Stop a sample when it produces this text (repeatable). <|endoftext|> always stops.")
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print text as it is produced.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list with prompt_ids, generated_ids and text for each sample (no streaming).")
@click.option("--device", default="cpu", show_default=True, help="Where to run: cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Cast the weights.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), metavar="PATH",
              help="Run an exported ONNX file with the torch-free runtime instead of MODEL (torch not needed).")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="onnxruntime execution provider for --onnx.")
def generate(model, prompts, max_new_tokens, temperature, top_k, top_p, greedy, seed, num_samples, stop, stream,
             as_json, device, dtype, onnx_path, provider) -> None:
    """Continue the prompt(s) with MODEL: a model directory, a Hugging Face or nanoGPT checkpoint, or a hub name.

    \b
    gpt2reg generate gpt2 --prompt "The meaning of life is" --top-p 0.9 --seed 0
    gpt2reg generate models/gpt2 -p "Once upon a time" -p "In 2026," --greedy --json
    gpt2reg generate --onnx exports/gpt2.onnx -p "Hello" --seed 0
    """
    if model is None and onnx_path is None:
        raise click.UsageError("give MODEL: a model directory, a checkpoint file or a hub name (or --onnx PATH)")
    if model is not None and onnx_path is not None:
        raise click.UsageError("give MODEL or --onnx PATH, not both")
    if onnx_path is not None and (dtype or device != "cpu"):
        raise click.UsageError("--device and --dtype apply to MODEL; an ONNX file runs on --provider")
    if any(not p for p in prompts):
        raise click.BadParameter("must not be empty (use \"<|endoftext|>\" for an unconditional sample)",
                                 param_hint="'--prompt'")
    if greedy and (temperature is not None or top_k is not None or top_p is not None):
        raise click.UsageError("--greedy takes the most likely token; drop --temperature, --top-k and --top-p")
    from ..generation import GenerationOptions

    options = GenerationOptions(1.0 if temperature is None else temperature, top_k, top_p, greedy,
                                max_new_tokens=max_new_tokens, seed=seed, num_samples=num_samples, stop=stop)

    if onnx_path is not None:
        from ..ort.runtime import OnnxGPT  # torch-free: this path works where torch is not installed

        loaded = OnnxGPT(onnx_path, provider=provider, huge_pages=max_new_tokens >= HUGE_PAGES_FROM)
        if loaded.provider_note:  # e.g. auto fell back to the CPU: say so, on stderr
            click.echo(f"Note: {loaded.provider_note}", err=True)

        def run(onnx_model, *args, **kwargs):
            return onnx_model.generate(*args, **kwargs)
    else:
        from ..accel import tune
        from ..checkpoints import load_model
        from ..generation import generate as run

        loaded = tune(load_model(model, device=device, dtype=dtype))
    heads = [f"--- prompt {p + 1}, sample {s + 1} ---" for p in range(len(prompts)) for s in range(num_samples)]
    several = len(heads) > 1
    live = stream and not as_json

    echoed = []  # the first sample's header and prompt, printed with its first text (not before an error)

    def start() -> None:
        if not echoed:
            echoed.append(True)
            if several:
                click.echo(heads[0])
            click.echo(prompts[0], nl=False)

    def on_text(index: int, text: str) -> None:
        if index == 0:  # the first sample streams; the others print, in order, when all are done
            start()
            click.echo(text, nl=False)

    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_args, **_kw: click.echo(f"Warning: {message}", err=True)
        warnings.simplefilter("always")
        samples = run(loaded, list(prompts), options, stream=on_text if live else None)

    if as_json:
        click.echo(json.dumps([s.to_dict() for s in samples], indent=2))
        return
    for i, sample in enumerate(samples):
        if live and i == 0:
            start()  # a sample that ended before any text still shows its prompt
            click.echo()
            continue
        if several:
            click.echo(heads[i])
        click.echo(prompts[sample.prompt_index] + sample.text)
