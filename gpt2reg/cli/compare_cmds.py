"""``gpt2reg compare``: train variants side by side on the same data and budget; report the difference."""

from __future__ import annotations

import json

import click

from .options import ARCH_OPTIONS, TRAIN_FIELDS, architecture_options, training_options


@click.command()
@click.option("--data", type=click.Path(), help="A text file or a folder of them (UTF-8), shared by every run.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Comparison folder: runs/<variant>-s<seed>/, logs/, report.md, report.html, results.json/.csv.")
@architecture_options
@training_options
@click.option("--variant", "variants", multiple=True, metavar="KEY=VALUE,...",
              help="A variant by its settings (any model or training option), e.g. pos=rope,act=swiglu or "
                   "pos=rope,lr=3e-3; name=NAME names it. Repeatable.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="A TOML file: seeds, [settings], [axes], [[variant]] (see the README).")
@click.option("--seeds", type=click.IntRange(1), help="Runs per variant, seeds --seed, --seed+1, ...  [default: 1]")
@click.option("--baseline", help="The variant the others are compared with.  [default: the first]")
@click.option("--match-params", is_flag=True, default=None,
              help="Resize the MLP of gated activations (swiglu, ...) to the ungated variants' parameter count.")
@click.option("--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Runs at once: on a CPU they split the cores; with GPUs one GPU each.")
@click.option("--nproc-per-node", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Processes per run under torchrun (data parallel).")
@click.option("--deploy", is_flag=True, help="Also export each variant to ONNX, validate it under onnxruntime and "
                                             "time decoding.")
@click.option("--print-commands", is_flag=True, help="Print the gpt2reg train command of every run; train nothing.")
@click.option("--report-only", is_flag=True, help="Rebuild the report from the run folders in -o; train nothing.")
@click.option("--allow-changed-data", is_flag=True,
              help="Go on when the corpus is no longer the text earlier runs in -o were trained on (the report "
                   "says which runs saw which data); without it that is an error.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def compare(ctx, out_dir, preset, variants, config_file, seeds, baseline, match_params, jobs, nproc_per_node,
            deploy, print_commands, report_only, allow_changed_data, as_json, compile_, **options) -> None:
    """Train model variants on the same data and budget; report which is better, by how much, and whether
    the difference is real (Welch's t-test over seeds).

    \b
    gpt2reg compare --data poems.txt --pos learned,rope,alibi --act gelu_tanh,swiglu \\
        --n-layer 4 --n-head 4 --n-embd 128 --block-size 128 --max-steps 300 --seeds 2 -o cmp
    gpt2reg compare --data poems.txt --variant pos=rope --variant pos=rope,lr=3e-3 -o cmp2
    gpt2reg compare -o cmp --report-only            # after runs made elsewhere (--print-commands)

    --pos, --act and --norm take comma-separated names: the grid of their combinations. Every other
    model and training option is shared by all runs. Running the same command again resumes
    unfinished runs and skips finished ones.
    """
    from ..compare import report
    from ..compare.spec import AXES, Comparison, grid, load_toml, parse_variant, split_axis

    if report_only:
        results = report.build_report(out_dir, baseline)
        _show(results, out_dir, as_json)
        _check_same_data(results, out_dir, allow_changed_data)
        return
    options["compile"] = compile_
    param_names = {"compile": "compile_"}
    given = {name for name in options if ctx.get_parameter_source(param_names.get(name, name))
             != click.core.ParameterSource.DEFAULT}
    toml = load_toml(config_file) if config_file else {"settings": {}, "axes": {}, "variants": []}
    settings = dict(toml["settings"])
    settings.update({ARCH_OPTIONS.get(k, k): options[k] for k in given
                     if k in TRAIN_FIELDS or (k in ARCH_OPTIONS and k not in AXES)})
    axes = {kind: values for kind, values in toml["axes"].items()}
    for kind in AXES:
        if options[kind] is not None:
            axes[kind] = split_axis(options[kind])
    for kind, values in list(axes.items()):
        if len(values) == 1:  # one value: a shared setting, not an axis
            settings[kind] = values[0]
            del axes[kind]
    all_variants = (grid(axes) if axes else []) + [parse_variant(v) for v in variants] + toml["variants"]
    comparison = Comparison(out_dir, all_variants, settings=settings, preset=preset,
                            seeds=seeds or toml.get("seeds") or 1, baseline=baseline or toml.get("baseline"),
                            match_params=bool(match_params if match_params is not None else toml.get("match_params")))
    if print_commands:
        from ..compare import print_commands as commands

        for line in commands(comparison, nproc_per_node=nproc_per_node):
            click.echo(line)
        for name, note in comparison.notes.items():
            click.echo(f"# {name}: {note}", err=True)
        click.echo(f"# then: gpt2reg compare -o {out_dir} --report-only", err=True)
        return
    from ..compare import run_comparison

    results = run_comparison(comparison, jobs=jobs, nproc_per_node=nproc_per_node, deploy=deploy,
                             echo=lambda line: click.echo(line, err=True), allow_changed_data=allow_changed_data)
    _show(results, out_dir, as_json)
    _check_same_data(results, out_dir, allow_changed_data)
    if results["interrupted"]:
        click.echo("interrupted: run the same command again to continue", err=True)
        ctx.exit(130)
    if results["failed"]:
        raise click.ClickException(f"{len(results['failed'])} run(s) failed: {', '.join(results['failed'])}; "
                                   f"see {out_dir}/logs/")


def _check_same_data(results: dict, out_dir: str, allow: bool) -> None:
    """Runs of one seed that did not train or evaluate on the same data make the comparison unfair: an
    error (exit 1), not only a line in the report, unless --allow-changed-data."""
    mixed = [seed for seed, d in results["same_data"].items() if not (d["same_batches"] and d["same_val_windows"])]
    if mixed and not allow:
        raise click.ClickException(f"the runs of seed(s) {', '.join(mixed)} did not all see the same data (the "
                                   f"corpus changed between runs?); see {out_dir}/report.md; retrain them on one "
                                   "text, or pass --allow-changed-data to accept the report as it is")


def _show(results: dict, out_dir: str, as_json: bool) -> None:
    from ..compare.report import REPORT_HTML, REPORT_MD, table

    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    header, rows = table(results)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    click.echo(f"report: {out_dir}/{REPORT_MD}, {out_dir}/{REPORT_HTML}")
