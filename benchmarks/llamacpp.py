"""llama.cpp beside gpt2reg in ``gpt2reg bench``: the bench's own weights as GGUF, timed by ``llama-bench``.

The rows ``llama.cpp-f32``, ``llama.cpp-q8_0`` and ``llama.cpp-q4_0`` run when the bench is pointed at
a llama.cpp build (``--llama-cpp DIR`` or ``$GPT2REG_LLAMA_CPP``; ``make llama-cpp`` makes one in
``.llama.cpp``). Each row writes the model in Hugging Face layout (with GPT-2's tokenizer files, rebuilt
from our own BPE ranks), converts it with the build's own ``convert_hf_to_gguf.py`` to f32, quantizes
that with ``llama-quantize`` (its default recipe for the type: q4_0 keeps the output head in q6_K,
as a llama.cpp user gets it), and runs one ``llama-bench -o json`` with the bench's thread count and
repeats:

- decode: ``-pg PROMPT,NEW`` (32,128 by default), one timed sample = a prompt of that length
  processed in one batch, then that many tokens decoded one at a time; tok/s = new tokens / the whole
  sample, the same count as our rows' "tokens / whole generate call". llama-bench feeds random tokens
  and never samples (no argmax over the vocabulary per step), and keeps the logits of the last token
  only. Its own ``tg128`` decodes from an empty context instead; we do not use it.
- prefill: ``-p 1024 -n 0``, one batch (llama.cpp splits it in micro-batches of 512), last logits.
- file MB (the quantized GGUF), export s (conversion, in its own process from start, plus
  quantization), peak RSS (llama-bench's own, from the kernel's accounting of that child), and
  weights MB/token from the GGUF's tensor sizes by our rows' rules: a position table and a token table
  that is not also the output head count one row, everything else in full. There is no load time.

Samples are best of the bench's ``--repeats`` like our rows (llama-bench warms up once first).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.workload import BenchSpec, check_context, hf_copy, run_measured, torch_threads, workload
from gpt2reg.errors import InputError

ENV = "GPT2REG_LLAMA_CPP"
HOW_TO_BUILD = f"build one with `make llama-cpp`, then pass --llama-cpp .llama.cpp (or set {ENV})"
TOOLS = ("llama-bench", "llama-quantize")
CONVERTER = "convert_hf_to_gguf.py"
# where a build keeps its tools and its converter: `make llama-cpp`'s layout, then a llama.cpp checkout's
TOOL_DIRS = ("bin", "build/bin", ".")
SOURCE_DIRS = ("src", ".")
TYPES = ("f32", "q8_0", "q4_0")


@dataclass(frozen=True)
class LlamaCppBuild:
    root: Path
    bench: Path  # llama-bench
    quantize: Path  # llama-quantize
    converter: Path  # convert_hf_to_gguf.py, beside its gguf-py

    def tool(self, name: str) -> Path | None:
        """Another program of the build (``llama-simple``, ...), where the build keeps its tools."""
        path = self.bench.parent / name
        return path if path.is_file() else None


def find_build(directory: str | os.PathLike) -> LlamaCppBuild:
    """The llama.cpp build in ``directory``: ``make llama-cpp``'s folder or a built llama.cpp checkout."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise InputError(f"llama.cpp build {directory}: no such directory; {HOW_TO_BUILD}")
    tools = next((root / d for d in TOOL_DIRS if all((root / d / t).is_file() for t in TOOLS)), None)
    if tools is None:
        raise InputError(f"llama.cpp build {directory}: no {' and '.join(TOOLS)} in "
                         f"{', '.join(d + '/' for d in TOOL_DIRS[:-1])} or the folder itself; {HOW_TO_BUILD}")
    source = next((root / d for d in SOURCE_DIRS if (root / d / CONVERTER).is_file()), None)
    if source is None:
        raise InputError(f"llama.cpp build {directory}: no {CONVERTER} in "
                         f"{', '.join(d + '/' for d in SOURCE_DIRS[:-1])} or the folder itself; {HOW_TO_BUILD}")
    return LlamaCppBuild(root.resolve(), tools.resolve() / TOOLS[0], tools.resolve() / TOOLS[1],
                         source.resolve() / CONVERTER)


def resolve_build(directory: str | None) -> str | None:
    """The build the bench uses, checked: ``directory``, else ``$GPT2REG_LLAMA_CPP``, else None."""
    if directory is not None:
        return str(find_build(directory).root)
    if not os.environ.get(ENV):
        return None
    try:
        return str(find_build(os.environ[ENV]).root)
    except InputError as exc:
        raise InputError(f"${ENV}: {exc}") from None


def missing_build(spec: BenchSpec) -> str | None:
    """Why a llama.cpp row cannot run (no build given), or None."""
    return None if spec.llama_cpp else f"no llama.cpp build; {HOW_TO_BUILD}"


# -- what llama-bench and a GGUF file say ---------------------------------------------------------


def parse_llama_bench(text: str, spec: BenchSpec) -> dict[str, Any]:
    """``decode_tps`` and ``prefill_s`` from ``llama-bench -o json`` output, best sample of each test, and
    what llama-bench says it ran (``threads``, ``info``: its build, model type and backends)."""
    try:
        tests = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"llama-bench printed no JSON ({exc})") from None
    if not isinstance(tests, list):
        raise RuntimeError("llama-bench printed JSON that is not a list of tests")
    found: dict[str, Any] = {}
    for test in tests:
        best_s = min(test.get("samples_ns") or [0]) / 1e9
        if best_s <= 0:
            continue
        shape = (test.get("n_prompt"), test.get("n_gen"), test.get("n_depth", 0))
        if shape == (spec.prompt_tokens, spec.new_tokens, 0):
            found["decode_tps"] = spec.new_tokens / best_s
        elif shape == (spec.prefill_tokens, 0, 0):
            found["prefill_s"] = best_s
    missing = {"decode_tps", "prefill_s"} - found.keys()
    if missing:
        raise RuntimeError(f"llama-bench reported no {' or '.join(sorted(missing))} test with timed samples")
    first = tests[0]
    found["threads"] = first.get("n_threads")
    found["info"] = (f"llama.cpp {first.get('build_commit', '?')}, {first.get('model_type', '?')}, "
                     f"{first.get('n_threads', '?')} threads, backends {first.get('backends', '?')}")
    return {k: v for k, v in found.items() if v is not None}


def gguf_weight_bytes(path: str | os.PathLike, gguf: Any = None) -> int:
    """Bytes of weights one batch-1 decode step reads from the GGUF file at ``path``.

    Every tensor in full, except the position table and a token table that is not also the output head
    (the file has an ``output.weight``): of those, one row. ``gguf`` is the ``gguf`` module to read with.
    """
    if gguf is None:
        import gguf
    tensors = gguf.GGUFReader(str(path)).tensors
    names = {t.name for t in tensors}
    lookups = {"position_embd.weight"} | ({"token_embd.weight"} if "output.weight" in names else set())
    total = 0
    for t in tensors:
        row_elements = int(t.shape[0])  # GGUF shapes list the innermost (row) dimension first
        total += int(t.n_bytes) * row_elements // int(t.n_elements) if t.name in lookups else int(t.n_bytes)
    return total


# -- the rows --------------------------------------------------------------------------------------


def llama_cpp_f32_row(spec: BenchSpec) -> dict[str, Any]:
    """llama.cpp on the f32 GGUF converted from the bench's model."""
    return _row(spec, "f32")


def llama_cpp_q8_0_row(spec: BenchSpec) -> dict[str, Any]:
    """llama.cpp on that file quantized to q8_0 by ``llama-quantize``."""
    return _row(spec, "q8_0")


def llama_cpp_q4_0_row(spec: BenchSpec) -> dict[str, Any]:
    """llama.cpp on that file quantized to q4_0 by ``llama-quantize`` (output head q6_K, its default)."""
    return _row(spec, "q4_0")


def _row(spec: BenchSpec, kind: str) -> dict[str, Any]:
    if spec.device != "cpu":
        raise RuntimeError(f"the llama.cpp rows run on the CPU only (got --device {spec.device})")
    build = find_build(spec.llama_cpp or "")
    gguf = _gguf_module(build)
    with tempfile.TemporaryDirectory(prefix="gpt2reg-bench-gguf-") as tmp:
        start = time.perf_counter()
        path = convert(build, spec.model, Path(tmp), kind)
        export_s = time.perf_counter() - start
        check_context(spec, int(gguf.GGUFReader(str(path)).fields["gpt2.context_length"].contents()))
        threads = torch_threads(spec)  # --threads, else torch's default, as the torch rows have it
        command = [str(build.bench), "-m", str(path), "-t", str(threads), "-r", str(spec.repeats), "-o", "json",
                   "-p", str(spec.prefill_tokens), "-n", "0", "-pg", f"{spec.prompt_tokens},{spec.new_tokens}"]
        out, peak_rss_mb = run_measured(command, "llama-bench")
        measured = {**parse_llama_bench(out, spec), "export_s": export_s, "file_mb": path.stat().st_size / 1e6,
                    "peak_rss_mb": peak_rss_mb, "weight_bytes": gguf_weight_bytes(path, gguf)}
        simple = build.tool("llama-simple")
        if simple is not None:  # the decode alone, as the other rows' decode RSS (workload.decode_rss_mb)
            from gpt2reg.tokenizer import get_tokenizer

            prompt = get_tokenizer().decode(workload(spec, 50257)[0])
            measured["decode_rss_mb"] = run_measured([str(simple), "-m", str(path), "-n", str(spec.new_tokens), prompt],
                                                     "llama-simple")[1]
        return measured


def convert(build: LlamaCppBuild, model: str, directory: Path, kind: str = "f32") -> Path:
    """``model`` as a GGUF file of type ``kind`` in ``directory``: llama.cpp's converter, then its quantizer."""
    if kind not in TYPES:
        raise InputError(f"GGUF type {kind!r}: choose from {', '.join(TYPES)}")
    hf_dir = _hf_with_tokenizer(model, directory / "hf")
    f32 = directory / "model-f32.gguf"
    run_measured([sys.executable, str(build.converter), str(hf_dir), "--outfile", str(f32), "--outtype", "f32"],
                  CONVERTER)
    if kind == "f32":
        return f32
    out = directory / f"model-{kind}.gguf"
    run_measured([str(build.quantize), str(f32), str(out), kind.upper()], "llama-quantize")
    f32.unlink()
    return out


def _hf_with_tokenizer(model: str, directory: Path) -> Path:
    """A Hugging Face GPT-2 folder with ``model``'s weights and GPT-2's tokenizer files, for the converter."""
    from gpt2reg.tokenizer import hf_tokenizer_files

    source, why = hf_copy(model, directory)
    if source is None:
        raise RuntimeError(f"llama.cpp's GPT-2 has no equivalent: {why}")
    source_dir = Path(source)
    if source_dir != directory:  # the model is itself a Hugging Face folder: link its files, never write there
        directory.mkdir(parents=True)
        for item in source_dir.iterdir():
            (directory / item.name).symlink_to(item.resolve())
    if not any((directory / name).exists() for name in ("tokenizer.json", "vocab.json")):
        for name, text in hf_tokenizer_files().items():
            (directory / name).write_text(text, encoding="utf-8")
    return directory


def _gguf_module(build: LlamaCppBuild) -> Any:
    """The build's own ``gguf`` package (its gguf-py, as its converter uses), else an installed one."""
    vendored = build.converter.parent / "gguf-py"
    if vendored.is_dir() and str(vendored) not in sys.path:
        sys.path.insert(0, str(vendored))
    import gguf

    return gguf


__all__ = ["ENV", "LlamaCppBuild", "convert", "find_build", "gguf_weight_bytes", "missing_build", "parse_llama_bench",
           "resolve_build"]
