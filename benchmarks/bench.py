"""``gpt2reg bench``: one table, engines side by side on the same weights, measured in the same run.

Each row is one engine (gpt2reg on torch, Hugging Face transformers, ...) measured in a fresh
subprocess, so its load time and peak resident memory are its own and one engine's thread pools or
caches never help or hurt another. Rows alternate over ``rounds`` and each figure keeps its best
round: a burst of load from another process slows one round, not one engine. Ratios compare rows
of the same run only.

Adding a row (ONNX Runtime, training, ...): write a function ``row(spec: BenchSpec) -> dict`` that
returns metric values keyed by ``Metric.key`` (any subset; add a ``Metric`` to ``METRICS`` for a new
figure) and append ``RowSpec(name, "module:function", requires=("some_module",))`` to ``ROWS``.
The function runs in its own process; ``peak_rss_mb`` is added for it. A row whose ``requires``
cannot be imported is listed as skipped. ``ratio`` metrics are divided by the baseline row's.

Threads: ``threads`` (``--threads``) sets every row's thread count (torch's intra-op threads,
onnxruntime's ``intra_op_num_threads``, llama-bench's ``-t``, the bandwidth probe's); unset, each engine
keeps its default. Each row reports the count it ran with (``threads``), since the defaults differ
between engines where a core runs two hardware threads.

How close each engine comes to the machine's limit: every round also measures the machine's read
bandwidth (a streaming read of a buffer far larger than any cache, on the rows' thread count; the
best round counts). A decode row that returns ``weight_bytes``, the bytes of weights one batch-1 decode
step reads (``decode_weight_bytes`` for a torch model; an ONNX file's initializers), gets the GB/s it
achieved (bytes x tokens/s) and that as a fraction of the bandwidth: the bound is bandwidth / bytes.
A row may also return ``info``, a line of text printed under the table (gpt2reg's kernel choice).
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.workload import BenchSpec, best_time, check_context, decode_rss_mb, hf_copy, torch_threads, workload
from gpt2reg.errors import InputError, first_line


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    fmt: str
    higher_is_better: bool
    ratio: bool = False  # also show row / baseline as a speed-up (> 1 is better)
    scale: float = 1.0  # shown as value x scale (bytes as MB)


METRICS: list[Metric] = [
    Metric("threads", "threads", "{:.0f}", False),  # what the row ran with (its engine's, when not --threads)
    Metric("load_s", "load s", "{:.2f}", False),
    Metric("pages_s", "huge pages s", "{:.2f}", False),  # after the load: a session's memory moved (gpt2reg.ort.pages)
    Metric("peak_rss_mb", "peak RSS MB", "{:.0f}", False),
    Metric("decode_rss_mb", "decode RSS MB", "{:.0f}", False),  # a fresh process: load + the decode alone
    Metric("prefill_s", "prefill s", "{:.3f}", False, ratio=True),
    Metric("decode_tps", "decode tok/s", "{:.1f}", True, ratio=True),
    Metric("weight_bytes", "weights MB/tok", "{:.0f}", False, scale=1e-6),
    Metric("train_tps", "train tok/s", "{:.1f}", True, ratio=True),
    Metric("mfu", "MFU %", "{:.1f}", True),
    Metric("export_s", "export s", "{:.1f}", False),
    Metric("file_mb", "file MB", "{:.1f}", False),
]


@dataclass(frozen=True)
class RowSpec:
    name: str
    target: str  # "module:function" taking a BenchSpec, returning {metric key: value}
    requires: tuple[str, ...] = ()
    baseline: bool = False  # the first baseline row that has a metric is that metric's reference
    default: bool = True  # run when no --rows are named
    default_if: str = ""  # a BenchSpec field: also run when no --rows are named and it is set
    check: str = ""  # "module:function" taking the BenchSpec, returning why the row cannot run (or None)


ROWS: list[RowSpec] = [
    RowSpec("gpt2reg", "benchmarks.bench:gpt2reg_row"),
    # the same without gpt2reg.accel.tune: what tuning gains (or would lose) on this machine
    RowSpec("gpt2reg-untuned", "benchmarks.bench:gpt2reg_untuned_row", default=False),
    RowSpec("transformers", "benchmarks.bench:transformers_row", requires=("transformers",), baseline=True),
    # ONNX Runtime on the KV-cache export (fp32, int8, int4; the opset-18 forms for providers without the
    # Attention op); also export time and file size. Each round exports the model again (~15-30 s for
    # 124M here), so only on request: --rows onnxruntime,...
    *[RowSpec(name, f"benchmarks.onnx_rows:{name.replace('-', '_')}_row", requires=("onnxruntime",), default=False)
      for name in ("onnxruntime", "onnxruntime-int8", "onnxruntime-int4", "onnxruntime-opset18",
                   "onnxruntime-int8-opset18")],
    # Training steps (forward, backward, AdamW) at the model's config; slow on a CPU, so only on request.
    RowSpec("gpt2reg-train", "benchmarks.training_rows:gpt2reg_train_row", default=False),
    RowSpec("transformers-train", "benchmarks.training_rows:transformers_train_row", requires=("transformers",),
            baseline=True, default=False),
    # llama.cpp on the same weights converted to GGUF, when the bench is given a build (--llama-cpp).
    *[RowSpec(f"llama.cpp-{kind}", f"benchmarks.llamacpp:llama_cpp_{kind}_row", requires=("transformers",),
              default=False, default_if="llama_cpp", check="benchmarks.llamacpp:missing_build")
      for kind in ("f32", "q8_0", "q4_0")],
]


@dataclass
class Row:
    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""  # why a row was skipped or failed
    info: str = ""  # what the row wants said under the table (the kernels it chose, ...)


@dataclass
class BenchReport:
    spec: BenchSpec
    machine: dict[str, Any]
    rows: list[Row]
    baseline: str | None
    rounds: int
    baselines: tuple[str, ...] = ()  # every baseline row measured, for metrics the first one lacks
    read_gbps: float | None = None  # the machine's streaming read bandwidth, measured in the same run
    read_threads: int | None = None  # the threads that read it

    def baseline_row(self, key: str) -> Row | None:
        """The row ``key`` is compared with: the baseline, or the next baseline row that has ``key``."""
        for name in (self.baseline, *self.baselines):
            row = next((r for r in self.rows if r.name == name), None)
            if row is not None and key in row.metrics:
                return row
        return None

    def ratio(self, row: Row, key: str) -> float | None:
        """``row``'s speed-up over the baseline for ``key`` (> 1: faster), or None."""
        base = self.baseline_row(key)
        if base is None or key not in row.metrics or not base.metrics.get(key) or not row.metrics[key]:
            return None
        metric = next(m for m in METRICS if m.key == key)
        a, b = row.metrics[key], base.metrics[key]
        return a / b if metric.higher_is_better else b / a

    def achieved_gbps(self, row: Row) -> float | None:
        """The weight bytes ``row`` read per second while decoding: bytes/token x tokens/s."""
        if "weight_bytes" not in row.metrics or "decode_tps" not in row.metrics:
            return None
        return row.metrics["weight_bytes"] * row.metrics["decode_tps"] / 1e9

    def bound_fraction(self, row: Row) -> float | None:
        """``row``'s decode speed over the bandwidth bound (bandwidth / weight bytes per token)."""
        achieved = self.achieved_gbps(row)
        return achieved / self.read_gbps if achieved is not None and self.read_gbps else None

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            ratios = {m.key: self.ratio(row, m.key) for m in METRICS if m.ratio}
            rows.append({**asdict(row), "vs_baseline": {k: v for k, v in ratios.items() if v is not None},
                         "achieved_gbps": self.achieved_gbps(row), "bound_fraction": self.bound_fraction(row)})
        return {"spec": asdict(self.spec), "machine": self.machine, "read_gbps": self.read_gbps,
                "read_threads": self.read_threads, "baseline": self.baseline, "rounds": self.rounds, "rows": rows}

    def format(self) -> str:
        """The machine, the workload, and the table."""
        s, m = self.spec, self.machine
        threads = (f"{m['threads']} in every row (--threads)" if m.get("threads") else
                   f"each engine's default (torch {m['torch_threads']}, onnxruntime {m['physical_cores']} = one per "
                   f"core, llama.cpp as torch); the threads column says what each row ran with")
        lines = [
            f"machine: {m['cpu']}, {m['cpus']} CPUs ({m['physical_cores']} cores), {m['memory_gb']} GB RAM, "
            f"{m['os']}; threads: {threads}",
            f"software: python {m['python']}, torch {m['torch']}"
            + (f", transformers {m['transformers']}" if m.get("transformers") else "")
            + (f", device {s.device}" + (f" ({m['gpu']})" if m.get("gpu") else "")),
            f"date: {m['date']}; model: {s.model}",
        ]
        if self.read_gbps:
            lines.append(f"memory: streaming read {self.read_gbps:.1f} GB/s ({probe_megabytes()} MB buffer, "
                         f"{self.read_threads} threads, best round of {self.rounds}); a decode step's bound is "
                         f"that over its weights MB/tok")
        if any(k in r.metrics for r in self.rows for k in ("decode_tps", "prefill_s")):
            lines.append(f"decode: batch 1, prompt {s.prompt_tokens} tokens, {s.new_tokens} new tokens, greedy "
                         f"(tokens / whole generate call); prefill: 1x{s.prefill_tokens} tokens, one forward pass "
                         f"with cache, last logits; best of {s.repeats} runs x {self.rounds} rounds")
        if any("train_tps" in r.metrics for r in self.rows):
            lines.append(f"train: {s.train_batch}x{s.train_seq} tokens per step (forward, loss, backward, clip, "
                         f"fused AdamW){', torch.compile' if s.train_compile else ''}; best of {s.repeats} steps "
                         f"x {self.rounds} rounds; MFU on GPUs with a known bf16 peak")
        lines.append("")
        shown = [mt for mt in METRICS if any(mt.key in r.metrics for r in self.rows)]
        headers = ["engine"] + [mt.header for mt in shown]
        bound = any(self.achieved_gbps(r) is not None for r in self.rows)
        if bound:
            headers += ["GB/s", "of bound"]
        ratio_metrics = [mt for mt in shown if mt.ratio] if self.baseline else []
        headers += [f"{mt.header.split()[0]} vs {getattr(self.baseline_row(mt.key), 'name', self.baseline)}"
                    for mt in ratio_metrics]
        table = []
        for row in self.rows:
            cells = [row.name] + [mt.fmt.format(row.metrics[mt.key] * mt.scale) if mt.key in row.metrics else "-"
                                  for mt in shown]
            if bound:
                achieved, fraction = self.achieved_gbps(row), self.bound_fraction(row)
                cells.append(f"{achieved:.1f}" if achieved is not None else "-")
                cells.append(f"{fraction:.0%}" if fraction is not None else "-")
            for mt in ratio_metrics:
                r = self.ratio(row, mt.key)
                cells.append(f"{r:.2f}x" if r is not None else "-")
            table.append((cells, row.note))
        widths = [max(len(h), *(len(c[i]) for c, _ in table)) for i, h in enumerate(headers)]
        def join(cells: list[str]) -> str:  # engine name left-aligned, figures right-aligned
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        lines.append(join(headers))
        for cells, note in table:
            lines.append(join(cells) + (f"  ({note})" if note else ""))
        lines += [f"{row.name}: {row.info}" for row in self.rows if row.info]
        return "\n".join(lines)


# -- running ------------------------------------------------------------------------------------


def row_names() -> list[str]:
    return [r.name for r in ROWS]


def run_bench(
    model: str,
    *,
    rows: list[str] | None = None,
    rounds: int = 2,
    progress: Callable[[str], None] | None = None,
    **spec_fields: Any,
) -> BenchReport:
    """Measure ``rows`` (default: all) on ``model`` (anything ``load_model`` accepts) and return the report."""
    if rounds < 1:
        raise InputError(f"rounds={rounds}: must be at least 1")
    spec = BenchSpec(model=model, **spec_fields)
    from benchmarks.llamacpp import resolve_build

    spec = replace(spec, llama_cpp=resolve_build(spec.llama_cpp))  # the option, else $GPT2REG_LLAMA_CPP; checked
    wanted = rows or [r.name for r in ROWS if r.default or (r.default_if and getattr(spec, r.default_if))]
    unknown = [n for n in wanted if n not in row_names()]
    if unknown:
        raise InputError(f"unknown bench row '{unknown[0]}'; choose from: {', '.join(row_names())}")
    specs = [r for r in ROWS if r.name in wanted]
    for name in ("prompt_tokens", "new_tokens", "prefill_tokens", "repeats", "train_batch", "train_seq"):
        if getattr(spec, name) < 1:
            raise InputError(f"{name}={getattr(spec, name)}: must be at least 1")
    from gpt2reg.accel.device import resolve_device
    from gpt2reg.checkpoints import load_model

    resolve_device(spec.device)  # an unknown or absent device, or a model that cannot load: one error
    load_model(model)  # here, before any row runs, rather than a failure note in every row
    results = {r.name: Row(r.name) for r in specs}
    runnable = []
    for r in specs:
        missing = [m for m in r.requires if importlib.util.find_spec(m) is None]
        why = f"{', '.join(missing)} not installed" if missing else _call(r.check, spec) if r.check else None
        if why:
            results[r.name].note = f"skipped: {why}"
        else:
            runnable.append(r)
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="gpt2reg-bench-") as tmp:
        if any(r.name == "transformers" for r in runnable):
            hf_dir, why = hf_copy(model, Path(tmp))
            if hf_dir is None:
                results["transformers"].note = f"skipped: {why}"
                runnable = [r for r in runnable if r.name != "transformers"]
            spec = replace(spec, hf_dir=hf_dir)
        read_gbps = read_threads = None
        for round_index in range(rounds if runnable else 0):  # nothing to measure: no bandwidth either
            say(f"round {round_index + 1}/{rounds}: read bandwidth")
            probe = _run_target("benchmarks.bench:bandwidth_probe", spec)
            read_gbps = max(filter(None, (read_gbps, probe.get("read_gbps"))), default=None)
            read_threads = probe.get("threads", read_threads)
            for r in runnable:
                say(f"round {round_index + 1}/{rounds}: {r.name}")
                _merge(results[r.name], _run_target(r.target, spec))
    baselines = tuple(r.name for r in specs if r.baseline and results[r.name].metrics)
    baseline = baselines[0] if baselines else None
    return BenchReport(spec, machine_info(spec.threads), [results[r.name] for r in specs], baseline, rounds,
                       baselines, read_gbps, read_threads)


def _call(target: str, *args: Any) -> Any:
    """Call ``target`` ("module:function") with ``args``."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)(*args)


def _merge(row: Row, measured: dict[str, Any]) -> None:
    if "error" in measured:
        row.note = f"failed: {measured['error']}"
        return
    row.info = measured.get("info", row.info)
    for metric in METRICS:
        if metric.key in measured:
            value = float(measured[metric.key])
            old = row.metrics.get(metric.key)
            better = old is None or (value > old if metric.higher_is_better else value < old)
            if metric.key in ("peak_rss_mb", "decode_rss_mb"):
                better = old is None or value > old  # report the worst peak seen, not the best
            if better:
                row.metrics[metric.key] = value


def _run_target(target: str, spec: BenchSpec) -> dict[str, Any]:
    """Run ``target`` ("module:function") in a fresh interpreter; its last stdout line is a JSON object."""
    request = json.dumps({"target": target, "spec": asdict(spec)})
    code = "from benchmarks.bench import _child_main; _child_main()"
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], input=request, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}


def _child_main() -> None:
    """Entry point of a row subprocess: run the row, add peak RSS, print one JSON line."""
    request = json.loads(sys.stdin.read())
    try:
        metrics = dict(_call(request["target"], BenchSpec(**request["spec"])))
        metrics.setdefault("peak_rss_mb", _peak_rss_mb())
    except Exception as exc:  # reported in the table, never a traceback in the middle of it
        metrics = {"error": first_line(exc, with_type=True)}
    print(json.dumps(metrics))


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, which starts afresh at exec; ru_maxrss would
    carry over the parent's peak (a bench that loaded the model itself made every row look as big)."""
    from gpt2reg.memory import resident

    return resident()[1] / 2**20


# -- the bandwidth bound ------------------------------------------------------------------------

BANDWIDTH_MB = 512  # far beyond any L3 a few cores share, and about GPT-2 small's weights


def read_bandwidth(megabytes: int = BANDWIDTH_MB, repeats: int = 5) -> float:
    """GB/s of the best streaming read (a sum, a max) over a ``megabytes`` fp32 buffer, on torch's threads.

    The buffer is tried in ordinary memory and, where the OS offers them, in huge pages, where
    ``gpt2reg.accel.tune`` puts the weights: a read from 4 KiB pages alone under-measures what the
    memory delivers (a TLB miss every 4 KiB; in a VM a two-level page walk each). The faster counts.
    """
    import torch

    from gpt2reg.accel.hugepages import available, empty

    nbytes = megabytes * 2**20
    best = math.inf
    for huge in (False, True) if available() else (False,):
        buffer = (empty(nbytes).view(torch.float32) if huge else torch.empty(nbytes // 4)).fill_(1.0)
        best = min(best, *(best_time(read, repeats, lambda: None) for read in (buffer.sum, buffer.amax)))
        del buffer  # one buffer at a time
    return nbytes / best / 1e9


def bandwidth_probe(spec: BenchSpec) -> dict[str, float]:
    """The bench's bandwidth figure, measured in a child process like the rows, on their thread count."""
    threads = torch_threads(spec)
    return {"read_gbps": read_bandwidth(probe_megabytes()), "threads": threads}


def probe_megabytes() -> int:
    """The probe's buffer: ``BANDWIDTH_MB``, or ``$GPT2REG_BENCH_PROBE_MB`` (the tests' tiny runs use 16)."""
    return int(os.environ.get("GPT2REG_BENCH_PROBE_MB") or BANDWIDTH_MB)


def decode_weight_bytes(model: Any, tables: Iterable[Any] = ()) -> int:
    """Bytes of parameters one batch-1 decode step reads: every parameter in full, except lookup
    tables (a token embedding that is not also the output head, a position table), of which it
    reads one row."""
    lookups = {id(t) for t in tables}
    return sum((p[0] if id(p) in lookups else p).numel() * p.element_size() for p in model.parameters())


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU, memory, OS, library versions and the bench's ``threads`` (None: each engine's default), for
    the table's header."""
    import torch

    from gpt2reg.accel.machine import cpu_name, physical_cores

    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "memory_gb": memory_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        from importlib.metadata import version

        info["transformers"] = version("transformers")
    except Exception:
        info["transformers"] = None
    return info


# -- the same weights for Hugging Face ----------------------------------------------------------


# -- the rows -----------------------------------------------------------------------------------


def _sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def gpt2reg_row(spec: BenchSpec, tuned: bool = True) -> dict[str, float]:
    """gpt2reg's own path: ``load_model``, ``tune`` and ``generate``, exactly as ``gpt2reg generate`` runs them."""
    import torch

    from gpt2reg.accel import tune
    from gpt2reg.accel.kernels import describe as describe_kernels
    from gpt2reg.checkpoints import load_model
    from gpt2reg.generation import generate

    sync = _sync(spec.device)
    threads = torch_threads(spec)
    start = time.perf_counter()
    model = load_model(spec.model, device=spec.device)
    if tuned:
        tune(model)
    sync()
    load_s = time.perf_counter() - start
    check_context(spec, model.config.block_size)
    prompt, long_ids = workload(spec, model.config.vocab_size)

    def decode() -> None:
        out = generate(model, prompt, max_new_tokens=spec.new_tokens, greedy=True, eos_token_id=None)
        assert len(out[0].generated_ids) == spec.new_tokens

    generate(model, prompt, max_new_tokens=min(8, spec.new_tokens), greedy=True)  # warm-up
    decode_s = best_time(decode, spec.repeats, sync)
    ids = torch.tensor([long_ids], device=spec.device)
    with torch.inference_mode():
        prefill_s = best_time(lambda: model.forward_cached(ids, last_only=True), spec.repeats, sync)
    # a position encoding's parameters are per-position tables; the token table is read in full as a tied head
    tables = [*model.pos.parameters(), *([model.wte.weight] if model.lm_head is not None else [])]
    decode_rss = decode_rss_mb(spec, "torch" if tuned else "torch-untuned", spec.model) if spec.device == "cpu" else None
    return {"load_s": load_s, "decode_tps": spec.new_tokens / decode_s, "prefill_s": prefill_s, "threads": threads,
            "weight_bytes": decode_weight_bytes(model, tables), **({"decode_rss_mb": decode_rss} if decode_rss else {}),
            "info": f"linear kernels: {describe_kernels()}" if tuned else "untuned: PyTorch's own kernels, ordinary pages"}


def gpt2reg_untuned_row(spec: BenchSpec) -> dict[str, float]:
    """gpt2reg's path without ``gpt2reg.accel.tune``: plain PyTorch kernels, weights where they were loaded."""
    return gpt2reg_row(spec, tuned=False)


def transformers_row(spec: BenchSpec) -> dict[str, float]:
    """Hugging Face ``GPT2LMHeadModel.from_pretrained`` and ``generate(do_sample=False)`` on the same weights."""
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    sync = _sync(spec.device)
    threads = torch_threads(spec)
    start = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(spec.hf_dir, dtype=torch.float32).to(spec.device).eval()
    sync()
    load_s = time.perf_counter() - start
    check_context(spec, model.config.n_positions)
    prompt, long_ids = workload(spec, model.config.vocab_size)
    ids = torch.tensor([prompt], device=spec.device)

    def decode(n: int) -> None:
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        assert out.shape[1] - ids.shape[1] == n

    decode(min(8, spec.new_tokens))  # warm-up
    decode_s = best_time(lambda: decode(spec.new_tokens), spec.repeats, sync)
    long = torch.tensor([long_ids], device=spec.device)
    with torch.inference_mode():
        prefill_s = best_time(lambda: model(long, use_cache=True, logits_to_keep=1), spec.repeats, sync)
    head_tied = model.lm_head.weight is model.transformer.wte.weight
    tables = [model.transformer.wpe.weight, *([] if head_tied else [model.transformer.wte.weight])]
    return {"load_s": load_s, "decode_tps": spec.new_tokens / decode_s, "prefill_s": prefill_s, "threads": threads,
            "weight_bytes": decode_weight_bytes(model, tables)}


__all__ = ["BenchReport", "BenchSpec", "METRICS", "Metric", "ROWS", "Row", "RowSpec", "decode_weight_bytes", "machine_info",
           "read_bandwidth", "run_bench", "torch_threads"]
