"""``gpt2reg bench``: decode speed, prefill time, memory and load time beside Hugging Face, same run."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("model", metavar="MODEL", required=False)
@click.option("--rows", help="Comma-separated rows to run (see --list-rows).  [default: all]")
@click.option("--list-rows", is_flag=True, help="List the available rows and exit.")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Rounds over all rows; each figure keeps its best round.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed runs per round.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=32, show_default=True, help="Decode prompt length.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=128, show_default=True, help="Tokens decoded per run.")
@click.option("--prefill-tokens", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Sequence length of the prefill measurement.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--train-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Training rows: sequences per step.")
@click.option("--train-seq", type=click.IntRange(min=1), default=256, show_default=True,
              help="Training rows: tokens per sequence (capped at the model's context).")
@click.option("--train-compile", is_flag=True, help="Training rows: torch.compile both models.")
@click.option("--llama-cpp", "llama_cpp", metavar="DIR",
              help="A llama.cpp build (`make llama-cpp` makes .llama.cpp): adds its f32, q8_0 and q4_0 rows on "
                   "the same weights.  [default: $GPT2REG_LLAMA_CPP]")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads for every row (torch, onnxruntime, llama.cpp) and the bandwidth probe.  "
                   "[default: each engine's own]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def bench(model, rows, list_rows, rounds, repeats, prompt_tokens, new_tokens, prefill_tokens, device, train_batch,
          train_seq, train_compile, llama_cpp, threads, as_json) -> None:
    """Benchmark MODEL (anything `gpt2reg generate` accepts) with every engine on the same weights.

    Each engine runs in its own process (its own load time and peak memory); rows alternate over the
    rounds. Ratios compare engines measured in this run only.
    """
    ROWS, run_bench = _benchmarks()

    if list_rows:
        for row in ROWS:
            when = (f" (with --{row.default_if.replace('_', '-')} or when named in --rows)" if row.default_if
                    else "" if row.default else " (only when named in --rows)")
            extra = (" (baseline)" if row.baseline else "") + when
            needs = f"  needs {', '.join(row.requires)}" if row.requires else ""
            click.echo(f"{row.name}{extra}{needs}")
        return
    if model is None:
        raise click.UsageError("Missing argument 'MODEL' (only --list-rows runs without one)")
    named = None if rows is None else [r.strip() for r in rows.split(",") if r.strip()]
    if named == []:
        raise click.UsageError(f"--rows {rows!r} names no row; name at least one (see --list-rows), or leave --rows "
                               "out for the default rows")
    report = run_bench(
        model,
        rows=named,
        rounds=rounds,
        repeats=repeats,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        prefill_tokens=prefill_tokens,
        device=device,
        train_batch=train_batch,
        train_seq=train_seq,
        train_compile=train_compile,
        llama_cpp=llama_cpp,
        threads=threads,
        progress=lambda msg: click.echo(f"bench: {msg}", err=True),
    )
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if not any(row.metrics for row in report.rows):
        from ..errors import InputError

        notes = "; ".join(f"{row.name}: {row.note or 'no result'}" for row in report.rows)
        raise InputError(f"no row of the benchmark produced a result ({notes})")


def _benchmarks():
    """``benchmarks.bench`` from the checkout this package was installed from (the benchmarks are not part
    of the package, as nanoGPT's and timm's are not): its folder sits beside ``gpt2reg/``."""
    import sys
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "benchmarks" / "bench.py").is_file() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from benchmarks.bench import ROWS, run_bench
    except ImportError:
        from ..errors import InputError

        raise InputError("the benchmarks live in the source repository's benchmarks/ folder, beside the package; "
                         "run `gpt2reg bench` from an install of a checkout (pip install -e .)") from None
    return ROWS, run_bench
