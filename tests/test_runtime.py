"""The torch-free runtime: an exported file runs with numpy, onnxruntime and tiktoken only.

The proof runs in a subprocess where ``import torch`` fails: the runtime API and
``gpt2reg generate --onnx`` must both work there and give the torch path's tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2reg.errors import InputError
from gpt2reg.generation import generate
from gpt2reg.model import build_model
from gpt2reg.onnx import export_onnx
from gpt2reg.ort.runtime import OnnxGPT, load

# The GPT-2 vocabulary, so text prompts encode; the rest tiny.
CONFIG = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50257, pos="rope", init_std=0.2)
# Exports that repeat a model reuse its trace (conftest.py).
pytestmark = pytest.mark.usefixtures("trace_each_model_once")

NO_TORCH = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test ({name})")
sys.meta_path.insert(0, _Block())
"""

# The gpt2reg command line, run as ``gpt2reg ARGS`` by ``_run_without_torch(CLI, *args)``.
CLI = """
import sys
from gpt2reg.cli import cli
try:
    cli(sys.argv[1:], prog_name="gpt2reg")
except SystemExit as exc:
    if exc.code:
        raise
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[object, Path]:
    model = build_model(**CONFIG, seed=0)
    return model, export_onnx(model, tmp_path_factory.mktemp("rt") / "tiny.onnx")


def _run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    script = NO_TORCH + code + "\nassert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
    root = str(Path(__file__).resolve().parent.parent)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=root)


def test_runtime_api_works_where_torch_cannot_be_imported(exported) -> None:
    model, path = exported
    code = """
import json, sys
try:
    import torch  # noqa
    raise SystemExit("torch imported")
except ImportError:
    pass
from gpt2reg.ort.runtime import OnnxGPT
m = OnnxGPT(sys.argv[1], provider="cpu")
out = m.generate(["Hello, my dog", "In 2026,"], max_new_tokens=12, greedy=True, eos_token_id=None)
print(json.dumps([s.generated_ids for s in out]))
"""
    result = _run_without_torch(code, str(path))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    want = generate(model, ["Hello, my dog", "In 2026,"], max_new_tokens=12, greedy=True, eos_token_id=None)
    assert got == [s.generated_ids for s in want]


def test_generate_onnx_cli_works_where_torch_cannot_be_imported(exported) -> None:
    model, path = exported
    args = ["generate", "--onnx", str(path), "-p", "Once upon a time", "-n", "10", "--greedy", "--json"]
    result = _run_without_torch(CLI, *args)
    assert result.returncode == 0, result.stderr
    samples = json.loads(result.stdout)
    want = generate(model, "Once upon a time", max_new_tokens=10, greedy=True)
    assert samples[0]["generated_ids"] == want[0].generated_ids and samples[0]["text"] == want[0].text


def test_runtime_reads_everything_from_the_file(exported) -> None:
    model, path = exported
    runtime = load(path, provider="cpu")
    assert runtime.provider == "CPUExecutionProvider" and runtime.kv_cache
    assert runtime.config == model.config.to_dict() and runtime.block_size == 64
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    import torch

    with torch.no_grad():
        want = model(torch.from_numpy(ids)).numpy()
    assert np.abs(runtime.logits(ids) - want).max() < 1e-4
    with pytest.raises(InputError, match="exceeds the context of 64"):
        runtime.logits(np.zeros((1, 65), dtype=np.int64))


def test_full_sequence_file_generates_the_same(tmp_path: Path, exported) -> None:
    model, _ = exported
    path = export_onnx(model, tmp_path / "full.onnx", kv_cache=False)
    runtime = OnnxGPT(path, provider="cpu")
    assert not runtime.kv_cache
    prompts = ["A", "The quick brown fox jumps"]
    want = generate(model, prompts, max_new_tokens=8, greedy=True, eos_token_id=None)
    got = runtime.generate(prompts, max_new_tokens=8, greedy=True, eos_token_id=None)
    assert [s.generated_ids for s in got] == [s.generated_ids for s in want]


def test_logits_to_keep_returns_the_last_positions(exported) -> None:
    _, path = exported
    runtime = OnnxGPT(path, provider="cpu")
    ids = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    every, presents = runtime.run(ids)
    last, presents_last = runtime.run(ids, logits_to_keep=1)
    assert every.shape == (2, 5, 50257) and last.shape == (2, 1, 50257)
    assert np.array_equal(last, every[:, -1:]) and all(np.array_equal(a, b) for a, b in zip(presents, presents_last, strict=True))
    assert np.array_equal(runtime.run(ids, logits_to_keep=3)[0], every[:, -3:])
    with pytest.raises(InputError, match="logits_to_keep=-1"):
        runtime.run(ids, logits_to_keep=-1)


def test_a_file_without_logits_to_keep_generates_identically(exported, tmp_path: Path) -> None:
    """The graph of ``export --format hf`` folders has no ``logits_to_keep`` (every position's logits:
    Optimum refuses inputs it does not know); the runtime slices its output itself, with or without
    the in-place cache."""
    model, path = exported
    now = OnnxGPT(path, provider="cpu")
    assert now.keeps_logits
    want = generate(model, ["Hello, my dog", "In 2026,"], max_new_tokens=10, greedy=True, eos_token_id=None)
    ids = np.array([[1, 2, 3, 4]])
    for quantize in (None, "int8"):
        without = OnnxGPT(export_onnx(model, tmp_path / f"without-{quantize}.onnx", quantize=quantize,
                                      logits_to_keep=False), provider="cpu")
        assert not without.keeps_logits and without.in_place == (quantize is not None)
        got = without.generate(["Hello, my dog", "In 2026,"], max_new_tokens=10, greedy=True, eos_token_id=None)
        if quantize is None:
            assert [s.generated_ids for s in got] == [s.generated_ids for s in want]
            assert np.array_equal(without.run(ids, logits_to_keep=2)[0], now.run(ids, logits_to_keep=2)[0])
        assert without.run(ids)[0].shape == (1, 4, 50257) and without.run(ids, logits_to_keep=1)[0].shape == (1, 1, 50257)


def test_a_foreign_onnx_file_is_a_one_line_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(InputError, match="not a gpt2reg ONNX export"):
        OnnxGPT(path, provider="cpu")
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError, match="onnxruntime cannot load it"):
        OnnxGPT(path, provider="cpu")
    with pytest.raises(InputError, match="no such ONNX file"):
        OnnxGPT(tmp_path / "missing.onnx")


def test_eval_of_an_onnx_file_works_where_torch_cannot_be_imported(exported, tmp_path: Path) -> None:
    model, path = exported
    text = "Hope is the thing with feathers\nThat perches in the soul,\n"
    (tmp_path / "poem.txt").write_text(text)
    result = _run_without_torch(CLI, "eval", str(path), "--data", str(tmp_path / "poem.txt"), "--device", "cpu",
                                "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    from gpt2reg.training import evaluate

    want = evaluate(model, tmp_path / "poem.txt", device="cpu")
    assert got["tokens"] == want["tokens"] and got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_host_buffers_reuse_only_what_nothing_else_holds() -> None:
    """A KV buffer handed back is reused for a similar size, but not while a view of it is alive
    (another cache's writes would show through it), and not for a size it would waste half of."""
    from gpt2reg.ort.runtime import HostBuffers

    def address(array: np.ndarray) -> int:
        return array.__array_interface__["data"][0]

    pool = HostBuffers()
    buffers = [pool.take((2, 3, 64, 8), np.float32)]
    buffers[0][:] = 1.5
    first = address(buffers[0])
    pool.give(buffers)
    buffers = [pool.take((2, 3, 40, 8), np.float32)]  # fits, and uses more than half of it
    assert address(buffers[0]) == first and buffers[0].shape == (2, 3, 40, 8)
    held = buffers[0][:, :, :4]  # a caller's view outlives the cache
    pool.give(buffers)
    buffers = [pool.take((2, 3, 40, 8), np.float32)]
    assert address(buffers[0]) != first
    buffers[0][:] = 7
    assert (held == 1.5).all()
    second = address(buffers[0])
    pool.give(buffers)
    assert address(pool.take((2, 3, 8, 8), np.float32)) != second  # 8 of 40 positions: too wasteful
    assert address(pool.take((2, 3, 40, 8), np.float32)) == second
