"""What every row shares: the workload spec, its random prompt, timing, thread count and a Hugging Face copy
of the weights. Its own module so that rows (``onnx_rows``, ``llamacpp``, ...) and ``bench`` import it, not
each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpt2reg.errors import InputError


@dataclass(frozen=True)
class BenchSpec:
    """What every row measures. ``hf_dir`` holds the same weights as ``model`` in Hugging Face format."""

    model: str
    hf_dir: str | None = None
    prompt_tokens: int = 32
    new_tokens: int = 128
    prefill_tokens: int = 1024
    repeats: int = 3  # timed runs inside one row process; the best counts
    device: str = "cpu"
    seed: int = 0
    train_batch: int = 4  # the training rows: sequences per step
    train_seq: int = 256  # and their length (capped at the model's context)
    train_compile: bool = False
    llama_cpp: str | None = None  # a llama.cpp build for the llama.cpp rows (benchmarks.llamacpp)
    threads: int | None = None  # every row's (and the bandwidth probe's) thread count; None: each engine's default


def torch_threads(spec: BenchSpec) -> int:
    """Set torch's intra-op threads to ``spec.threads`` (when given) in this row's process; the count in use."""
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    return torch.get_num_threads()


def hf_copy(model: str, directory: Path) -> tuple[str | None, str]:
    """A Hugging Face GPT-2 directory with ``model``'s weights: the model itself if it is one, else a copy."""
    path = Path(model)
    if (path / "config.json").is_file():
        return str(path), ""
    from gpt2reg.checkpoints import hf_config, hf_state_dict, load_model
    from gpt2reg.errors import CheckpointError

    gpt = load_model(model)
    try:
        config = hf_config(gpt.config.replace(dropout=0.0))
    except CheckpointError as exc:
        return None, str(exc)
    from safetensors.torch import save_file

    tensors = hf_state_dict(gpt)
    from gpt2reg.files import staged

    with staged(directory, what="the transformers row's copy of the model", option="set TMPDIR") as stage:
        save_file(tensors, str(stage.path("model.safetensors")), metadata={"format": "pt"})
        stage.path("config.json").write_text(json.dumps(config, indent=2))
    return str(directory), ""


def best_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def workload(spec: BenchSpec, vocab_size: int) -> tuple[list[int], list[int]]:
    """Random token ids (seeded): the decode prompt and the prefill sequence."""
    import random

    rng = random.Random(spec.seed)
    vocab = min(vocab_size, 50257)
    prompt = [rng.randrange(vocab) for _ in range(spec.prompt_tokens)]
    return prompt, [rng.randrange(vocab) for _ in range(spec.prefill_tokens)]


def check_context(spec: BenchSpec, block_size: int) -> None:
    if spec.prefill_tokens > block_size or spec.prompt_tokens + spec.new_tokens > block_size:
        raise InputError(
            f"the workload does not fit the model's context of {block_size} tokens "
            f"(prefill {spec.prefill_tokens}, prompt {spec.prompt_tokens} + {spec.new_tokens} new)"
        )


# Runs a command and writes its peak RSS (KiB) to argv[1]. A process forked from the bench's row
# (torch loaded, the model read) would inherit that process's peak in ru_maxrss across exec; forked
# from this small interpreter, the figure is the command's own (within this interpreter's ~10 MB).
_MEASURE = """
import os, sys
pid = os.fork() or os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str], what: str) -> tuple[str, float]:
    """Run ``command``; its stdout and its own peak resident memory in MB. A failure: its last stderr line."""
    with tempfile.TemporaryDirectory(prefix="gpt2reg-rss-") as tmp:
        rss_file = Path(tmp) / "rss"
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(rss_file), *command], capture_output=True,
                              stdin=subprocess.DEVNULL, env=env)
        stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        if proc.returncode:
            tail = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
        return stdout, int(rss_file.read_text()) / 2**10  # KiB on Linux


# A decode alone, in a fresh process: the model loaded as its users load it, the bench's prompt, its
# new tokens greedy. argv: onnx|torch, the file or model, then the BenchSpec as JSON.
_DECODE = """
import json, sys
from benchmarks.workload import BenchSpec, workload
kind, model, spec = sys.argv[1], sys.argv[2], BenchSpec(**json.loads(sys.argv[3]))
if kind == "onnx":
    from gpt2reg.ort.runtime import OnnxGPT
    engine = OnnxGPT(model, provider="cpu", threads=spec.threads)
    generate, vocab = engine.generate, engine.vocab_size
else:
    import torch
    from gpt2reg.accel import tune
    from gpt2reg.checkpoints import load_model
    from gpt2reg.generation import generate as generate_text
    if spec.threads:
        torch.set_num_threads(spec.threads)
    engine = tune(load_model(model)) if kind == "torch" else load_model(model)
    generate, vocab = (lambda *a, **k: generate_text(engine, *a, **k)), engine.config.vocab_size
out = generate(workload(spec, vocab)[0], max_new_tokens=spec.new_tokens, greedy=True, eos_token_id=None)
assert len(out[0].generated_ids) == spec.new_tokens
"""


def decode_rss_mb(spec: BenchSpec, kind: str, model: str) -> float:
    """Peak resident memory of a process that loads ``model`` and decodes the bench's workload, nothing
    else: the memory a deployment needs (``kind``: ``onnx`` a file, ``torch`` a model tuned as the CLI
    does, ``torch-untuned``). The llama.cpp rows measure ``llama-simple`` the same way."""
    return run_measured([sys.executable, "-c", _DECODE, kind, model, json.dumps(asdict(spec))], "the decode")[1]
