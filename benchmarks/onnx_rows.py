"""``gpt2reg bench`` rows for ONNX Runtime: export time, file size, load, prefill and decode speed.

Each row exports the model in a child process (torch, timed without the model load) and then runs
the file through ``gpt2reg.ort.runtime`` in the row's own process, which never imports torch: its load
time and peak memory are the runtime's alone. The load is the session's alone (what ``gpt2reg
generate --onnx`` pays); moving the session's memory into huge pages, which a long-lived session does
at load (``gpt2reg.ort.pages``), follows as its own figure (``pages_s``), so decode and prefill are
measured as a server runs them. Decode is greedy ``OnnxGPT.generate``, exactly as ``generate --onnx``
runs it. The prefill figure is what generation's prefill does: one KV-cache graph call over the whole
sequence with ``logits_to_keep=1``, so the head projects the last position only, as the torch and
Hugging Face rows do. ``weight_bytes`` is what the file's decode step reads
(``weight_bytes_per_token``), from which the bench derives the GB/s achieved and the fraction of the
machine's bandwidth bound.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.workload import BenchSpec, best_time, check_context, decode_rss_mb, workload
from gpt2reg.onnx.weights import weight_bytes_per_token
from gpt2reg.ort.metadata import DEFAULT_OPSET

_EXPORT = """
import json, sys, time
from gpt2reg.checkpoints import load_model
from gpt2reg.onnx import export_onnx
model = load_model(sys.argv[1])
start = time.perf_counter()
export_onnx(model, sys.argv[2], quantize=sys.argv[3] or None, opset=int(sys.argv[4]))
print(json.dumps(time.perf_counter() - start))
"""


def _export(model: str, path: Path, quantize: str | None, opset: int) -> float:
    """Export in a child of its own, in the caller's working folder (where a relative MODEL is found; the
    child inherits the PYTHONPATH that finds benchmarks/ and gpt2reg)."""
    proc = subprocess.run([sys.executable, "-c", _EXPORT, model, str(path), quantize or "", str(opset)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError("export failed: " + (proc.stderr.strip().splitlines() or ["no output"])[-1])
    return float(proc.stdout.strip().splitlines()[-1])


def _row(spec: BenchSpec, quantize: str | None, opset: int = DEFAULT_OPSET) -> dict[str, float]:
    from gpt2reg.ort.runtime import OnnxGPT

    with tempfile.TemporaryDirectory(prefix="gpt2reg-bench-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_s = _export(spec.model, path, quantize, opset)
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        provider = "cuda" if spec.device.startswith("cuda") else "cpu"
        start = time.perf_counter()
        model = OnnxGPT(path, provider=provider, threads=spec.threads, huge_pages=False)  # what a one-shot run pays
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        model.use_huge_pages()  # what a long-lived session pays once more, before the speed measured below
        pages_s = time.perf_counter() - start
        check_context(spec, model.block_size)
        prompt, long_ids = workload(spec, model.vocab_size)

        def decode() -> None:
            out = model.generate(prompt, max_new_tokens=spec.new_tokens, greedy=True, eos_token_id=None)
            assert len(out[0].generated_ids) == spec.new_tokens

        def no_sync() -> None:
            return None

        model.generate(prompt, max_new_tokens=min(8, spec.new_tokens), greedy=True)  # warm-up
        decode_s = best_time(decode, spec.repeats, no_sync)
        long = np.array([long_ids], dtype=np.int64)
        prefill_s = best_time(lambda: model.run(long, logits_to_keep=1), spec.repeats, no_sync)
        weight_bytes = weight_bytes_per_token(path)
        memory = {"decode_rss_mb": decode_rss_mb(spec, "onnx", str(path))} if provider == "cpu" else {}
    return {"threads": _threads(model.session), "load_s": load_s, "pages_s": pages_s, "decode_tps": spec.new_tokens / decode_s, "prefill_s": prefill_s,
            "export_s": export_s, "file_mb": size / 1e6, "weight_bytes": weight_bytes, **memory}


def _threads(session) -> int:
    """The intra-op threads ``session`` runs with: as set, else onnxruntime's default, one per physical core."""
    from gpt2reg.accel.machine import physical_cores

    return session.get_session_options().intra_op_num_threads or physical_cores()


def onnxruntime_row(spec: BenchSpec) -> dict[str, float]:
    """The default fp32 KV-cache export under onnxruntime."""
    return _row(spec, None)


def onnxruntime_int8_row(spec: BenchSpec) -> dict[str, float]:
    """The default int8 (8-bit MatMulNBits) export."""
    return _row(spec, "int8")


def onnxruntime_int4_row(spec: BenchSpec) -> dict[str, float]:
    """The default int4 (MatMulNBits, block-wise 4-bit weights) export."""
    return _row(spec, "int4")


def onnxruntime_opset18_row(spec: BenchSpec) -> dict[str, float]:
    """fp32 at ``--opset 18`` (attention as plain MatMul/Softmax, for providers without the Attention op)."""
    return _row(spec, None, opset=18)


def onnxruntime_int8_opset18_row(spec: BenchSpec) -> dict[str, float]:
    """int8 at ``--opset 18``."""
    return _row(spec, "int8", opset=18)


__all__ = ["onnxruntime_row", "onnxruntime_int8_row", "onnxruntime_int4_row", "onnxruntime_opset18_row",
           "onnxruntime_int8_opset18_row"]
