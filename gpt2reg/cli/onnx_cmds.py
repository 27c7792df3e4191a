"""``gpt2reg export`` and ``gpt2reg validate``: ONNX graphs of any variant, checked against torch."""

from __future__ import annotations

import json
import time

import click

from ..ort.metadata import DEFAULT_OPSET, QUANTIZATIONS
from .options import SEED, Real

_PROVIDER = click.Choice(["auto", "cuda", "cpu"])


def _print_report(report, as_json: bool) -> None:
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())


@click.command()
@click.argument("model_source", metavar="MODEL")
@click.option("--format", "fmt", type=click.Choice(["onnx", "hf"]), default="onnx", show_default=True,
              help="onnx: one self-describing file for gpt2reg's runtime. hf: a folder that Optimum, transformers.js, "
                   "onnxruntime-genai and onnxruntime programs load as it is (config, tokenizer, onnx/, model card).")
@click.option("-o", "--output", type=click.Path(),
              help="ONNX file (or, with --format hf, folder) to write.  [default: exports/<model name>.onnx, "
                   "or the folder exports/<model name>]")
@click.option("--kv-cache/--no-kv-cache", default=True, show_default=True,
              help="Decoder graph with past/present KV cache, or the full-sequence graph.")
@click.option("--opset", type=click.IntRange(18), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset; 18 for runtimes without the opset-23 Attention op.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--quantize", type=click.Choice(QUANTIZATIONS),
              help="Block-wise 8- or 4-bit weights (onnxruntime MatMulNBits). Fast CPU inference.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Check the file against the torch model under onnxruntime.")
@click.option("--atol", type=Real(min=0), help="Validation tolerance.  [default: per dtype, see validate]")
@click.option("--provider", type=_PROVIDER, default="auto", show_default=True, help="Execution provider for validation.")
@click.option("--cases", type=click.IntRange(1), default=8, show_default=True, help="Validation cases.")
@click.option("--force", is_flag=True, help="Overwrite an existing file that gpt2reg did not write.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export(model_source, fmt, output, kv_cache, opset, dtype, quantize, validate, atol, provider, cases, force,
           as_json) -> None:
    """Export MODEL (model dir, checkpoint or hub name) to ONNX and, by default, validate it.

    The file is written only when it loads in onnxruntime and, with validation, matches the torch model.
    """
    if quantize and dtype != "fp32":
        raise click.UsageError(f"--quantize {quantize} starts from fp32 weights; drop --dtype fp16")
    if fmt == "hf":
        if not kv_cache:
            raise click.UsageError("--format hf writes the KV-cache graph that generation needs; drop --no-kv-cache")
        _export_folder(model_source, output, opset, dtype, quantize, validate, atol, provider, cases, force, as_json)
        return
    from ..checkpoints import load_model
    from ..errors import InputError
    from ..files import check_file
    from ..onnx.export import default_export_path, export_onnx, is_export
    from ..onnx.validate import validate_onnx

    path = output if output is not None else default_export_path(model_source, kv_cache=kv_cache, dtype=dtype, quantize=quantize)
    # Before the model is loaded and exported: a read-only or taken location fails at once.
    check_file(path, what="the ONNX file", force=force, owned=is_export)
    if output and not str(output).endswith(".onnx"):  # eval, serve and bench tell an export from a model by it
        raise click.UsageError(f"-o {output}: an ONNX file's name ends in .onnx (eval, serve and bench take a path "
                               f"without it for a model folder); use -o {output}.onnx")
    model = load_model(model_source)
    reports, timing = [], {"validation": 0.0}

    def verify(tmp) -> None:
        started = time.perf_counter()
        report = validate_onnx(tmp, model, provider=provider, atol=atol, cases=cases)
        reports.append(report)
        timing["validation"] = time.perf_counter() - started
        if not report.passed:
            if not as_json:
                click.echo(report.summary())
            raise InputError(f"the export of {model_source} does not match the torch model ({report.reason}); "
                             f"nothing was written (--no-validate writes it anyway)")

    start = time.perf_counter()
    path = export_onnx(model, path, kv_cache=kv_cache, opset=opset, dtype=dtype, quantize=quantize,
                       model_name=str(model_source), force=force, verify=verify if validate else None)
    seconds = time.perf_counter() - start - timing["validation"]
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    result = {"path": str(path), "bytes": size, "export_seconds": round(seconds, 2),
              "graph": "kv_cache" if kv_cache else "full_sequence", "dtype": dtype, "quantize": quantize}
    report = reports[0] if reports else None
    if as_json:
        click.echo(json.dumps({**result, "validation": report.to_dict() if report else None}, indent=2))
    else:
        click.echo(f"wrote {path} ({size / 1e6:.1f} MB, {result['graph']}, {quantize or dtype}) in {seconds:.1f} s")
        if report:
            click.echo(report.summary())


def _export_folder(model_source, output, opset, dtype, quantize, validate, atol, provider, cases, force, as_json) -> None:
    """``export --format hf``: the folder of ``gpt2reg.onnx.folder``, validated like the single file."""
    from ..checkpoints import load_model
    from ..errors import InputError
    from ..files import check_folder
    from ..onnx.export import default_export_path
    from ..onnx.folder import export_folder, is_folder_export
    from ..onnx.validate import validate_onnx

    folder = output if output is not None else default_export_path(model_source, dtype=dtype, quantize=quantize).with_suffix("")
    check_folder(folder, what="the model folder", force=force, reusable=is_folder_export)
    model = load_model(model_source)
    reports = []

    def verify(tmp):
        report = validate_onnx(tmp, model, provider=provider, atol=atol, cases=cases)
        reports.append(report)
        if not report.passed:
            if not as_json:
                click.echo(report.summary())
            raise InputError(f"the export of {model_source} does not match the torch model ({report.reason}); "
                             f"nothing was written (--no-validate writes it anyway)")
        return report

    start = time.perf_counter()
    path = export_folder(model, folder, dtype=dtype, quantize=quantize, opset=opset, model_name=str(model_source),
                         force=force, verify=verify if validate else None)
    seconds = time.perf_counter() - start
    root = path.parent.parent
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    report = reports[0] if reports else None
    if as_json:
        result = {"path": str(root), "onnx": str(path), "bytes": size, "seconds": round(seconds, 2),
                  "dtype": dtype, "quantize": quantize, "validation": report.to_dict() if report else None}
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"wrote {root}/ ({path.relative_to(root)}, {size / 1e6:.1f} MB, {quantize or dtype}) in {seconds:.1f} s")
        if report:
            click.echo(report.summary())


@click.command()
@click.argument("onnx_path", metavar="ONNX_PATH", type=click.Path(dir_okay=False))
@click.argument("model_source", metavar="MODEL")
@click.option("--provider", type=_PROVIDER, default="auto", show_default=True,
              help="auto takes CUDA when it really loads; cuda fails where it cannot.")
@click.option("--atol", type=Real(min=0),
              help="Max |logit difference|.  [default: fp32 1e-4, fp16 2e-2, int8 0.5, int4 2.0]")
@click.option("--cases", type=click.IntRange(1), default=8, show_default=True,
              help="Random cases (batch 1-4; lengths 1, odd, full context; past 0 and > 0; left padding).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def validate(onnx_path, model_source, provider, atol, cases, seed, as_json) -> None:
    """Compare ONNX_PATH under onnxruntime with MODEL in torch; exit status 1 when they disagree."""
    from ..checkpoints import load_model
    from ..onnx.validate import describe, validate_onnx

    describe(onnx_path)  # a missing or foreign file fails before the model is loaded
    report = validate_onnx(onnx_path, load_model(model_source), provider=provider, atol=atol, cases=cases, seed=seed)
    _print_report(report, as_json)
    if not report.passed:
        click.get_current_context().exit(1)
