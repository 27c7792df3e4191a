"""The llama.cpp bench rows: finding a build, reading llama-bench's JSON and a GGUF file's decode bytes,
the one-line errors without a build; and, where a llama.cpp build is present, the real thing on a tiny
model (``GPT2REG_LLAMA_CPP`` or the repository's ``.llama.cpp`` from ``make llama-cpp``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import gpt2reg
from benchmarks.bench import BenchSpec, run_bench
from benchmarks.llamacpp import ENV, find_build, gguf_weight_bytes, parse_llama_bench, resolve_build
from gpt2reg.cli import cli
from gpt2reg.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _fake_build(root: Path, tools: str = "bin", source: str = "src") -> Path:
    for name in ("llama-bench", "llama-quantize"):
        (root / tools).mkdir(parents=True, exist_ok=True)
        (root / tools / name).write_text("")
    (root / source).mkdir(parents=True, exist_ok=True)
    (root / source / "convert_hf_to_gguf.py").write_text("")
    return root


@pytest.mark.parametrize("tools,source", [("bin", "src"), ("build/bin", ".")], ids=["make-llama-cpp", "checkout"])
def test_a_build_is_found_in_either_layout(tmp_path: Path, tools: str, source: str) -> None:
    build = find_build(_fake_build(tmp_path, tools, source))
    assert build.bench == (tmp_path / tools / "llama-bench").resolve()
    assert build.quantize.name == "llama-quantize" and build.converter.parent == (tmp_path / source).resolve()


def test_no_build_is_none_and_the_env_var_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert resolve_build(None) is None
    monkeypatch.setenv(ENV, str(_fake_build(tmp_path)))
    assert resolve_build(None) == str(tmp_path.resolve())
    monkeypatch.setenv(ENV, str(tmp_path / "gone"))
    with pytest.raises(InputError, match=rf"^\${ENV}: llama.cpp build .*gone: no such directory; build one with"):
        resolve_build(None)


@pytest.mark.parametrize("make,expected", [
    (lambda p: p / "gone", "no such directory"),
    (lambda p: p, "no llama-bench and llama-quantize in bin/, build/bin/ or the folder itself"),
    (lambda p: (_fake_build(p) / "src" / "convert_hf_to_gguf.py").unlink() or p, "no convert_hf_to_gguf.py in src/"),
], ids=["missing", "no-tools", "no-converter"])
def test_a_bad_build_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, expected) -> None:
    monkeypatch.delenv(ENV, raising=False)
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--llama-cpp", str(make(tmp_path))])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: llama.cpp build ") and expected in lines[0], result.output
    assert "make llama-cpp" in lines[0] and "Traceback" not in result.output


def test_rows_without_a_build_say_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    gpt2reg.save_model(gpt2reg.build_model(**gpt2reg.testing.TINY, seed=0), tmp_path / "m")
    report = run_bench(str(tmp_path / "m"), rows=["llama.cpp-f32", "llama.cpp-q4_0"], rounds=1)
    for row in report.rows:
        assert row.metrics == {}
        assert row.note == (f"skipped: no llama.cpp build; build one with `make llama-cpp`, then pass "
                            f"--llama-cpp .llama.cpp (or set {ENV})")
    result = CliRunner().invoke(cli, ["bench", str(tmp_path / "m"), "--rows", "llama.cpp-q8_0", "--rounds", "1"])
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(error) == 1 and "llama.cpp-q8_0: skipped: no llama.cpp build" in error[0]


def test_list_rows_shows_the_llama_cpp_rows() -> None:
    result = CliRunner().invoke(cli, ["bench", "m", "--list-rows"])
    for kind in ("f32", "q8_0", "q4_0"):
        assert f"llama.cpp-{kind} (with --llama-cpp or when named in --rows)" in result.output


def _test(n_prompt: int, n_gen: int, samples_ns: list[int]) -> dict:
    """One test as ``llama-bench -o json`` prints it (the fields we read, and a few others)."""
    return {"build_commit": "0c1e570", "model_type": "gpt2 ?B F32", "n_threads": 2, "n_prompt": n_prompt,
            "n_gen": n_gen, "n_depth": 0, "samples_ns": samples_ns,
            "samples_ts": [(n_prompt + n_gen) / (s / 1e9) for s in samples_ns]}


def test_llama_bench_json_gives_decode_and_prefill() -> None:
    spec = BenchSpec(model="m", prompt_tokens=32, new_tokens=128, prefill_tokens=1024)
    text = json.dumps([_test(1024, 0, [300_000_000, 250_000_000]), _test(32, 128, [900_000_000, 800_000_000])])
    # tokens per second counts the new tokens over the whole sample (prompt included), like our rows
    assert parse_llama_bench(text, spec) == {"decode_tps": pytest.approx(128 / 0.8), "prefill_s": 0.25, "threads": 2,
                                             "info": "llama.cpp 0c1e570, gpt2 ?B F32, 2 threads, backends ?"}


@pytest.mark.parametrize("text,message", [
    ("main: error: failed to load model", "printed no JSON"),
    ('{"n_prompt": 1}', "not a list of tests"),
    (json.dumps([_test(1024, 0, [1])]), "no decode_tps test"),
    (json.dumps([_test(64, 0, [1]), _test(32, 128, [1])]), "no prefill_s test"),  # another prefill length
    (json.dumps([_test(1024, 0, []), _test(32, 128, [1])]), "no prefill_s test"),  # no timed sample
])
def test_llama_bench_json_that_lacks_a_figure_is_an_error(text: str, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        parse_llama_bench(text, BenchSpec(model="m"))


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "own-head"])
def test_gguf_weight_bytes_follow_the_rows_rules(tmp_path: Path, tied: bool) -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    q8_0 = gguf.GGMLQuantizationType.Q8_0
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", "gpt2")
    # token table 10 x 64 in q8_0 (a row: 2 blocks of 32 at 34 bytes), positions 16 x 64 f32, one matrix
    writer.add_tensor("token_embd.weight", gguf.quants.quantize(np.ones((10, 64), np.float32), q8_0), raw_dtype=q8_0)
    writer.add_tensor("position_embd.weight", np.ones((16, 64), np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", np.ones((128, 64), np.float32))
    writer.add_tensor("output_norm.bias", np.ones(64, np.float32))
    if not tied:
        writer.add_tensor("output.weight", np.ones((10, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    common = 64 * 4 + 128 * 64 * 4 + 64 * 4  # one position row, the matrix, the bias
    # tied: the token table is the output head, read in full; else one row of it and the head in full
    expected = common + (10 * 68 if tied else 68 + 10 * 64 * 4)
    assert gguf_weight_bytes(tmp_path / "m.gguf", gguf) == expected


# -- with a llama.cpp build ----------------------------------------------------------------------------


def _build_dir() -> Path | None:
    for candidate in (os.environ.get(ENV), REPO / ".llama.cpp"):
        if candidate:
            try:
                return find_build(candidate).root
            except InputError:
                continue
    return None


needs_build = pytest.mark.skipif(_build_dir() is None, reason=f"no llama.cpp build (make llama-cpp, or set {ENV})")


@pytest.fixture(scope="module")
def gpt2_vocab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with GPT-2's whole vocabulary: llama.cpp converts it with GPT-2's tokenizer. At GPT-2's
    init (std 0.02) random weights repeat one token when decoding greedily; at 0.5 they wander."""
    path = tmp_path_factory.mktemp("llamacpp") / "m"
    model = gpt2reg.build_model(n_layer=2, n_head=2, n_embd=64, block_size=128, seed=0, init_std=0.5)
    gpt2reg.save_model(model, path)
    return path


@needs_build
def test_llama_cpp_greedy_tokens_match_ours_on_the_converted_f32(gpt2_vocab_model: Path, tmp_path: Path) -> None:
    """The conversion is the same model: llama.cpp's greedy continuation equals gpt2reg's."""
    from benchmarks.llamacpp import convert
    from gpt2reg.generation import generate
    from gpt2reg.tokenizer import get_tokenizer

    build = find_build(_build_dir())
    simple = build.tool("llama-simple")
    if simple is None:
        pytest.skip("this llama.cpp build has no llama-simple")
    path = convert(build, str(gpt2_vocab_model), tmp_path, "f32")
    prompt, n = "The quick brown fox", 24
    out = subprocess.run([str(simple), "-m", str(path), "-n", str(n), prompt], capture_output=True, check=True).stdout
    model = gpt2reg.load_model(gpt2_vocab_model)
    ours = generate(model, get_tokenizer().encode(prompt), max_new_tokens=n, greedy=True, eos_token_id=None)
    text = get_tokenizer().decode(ours[0].generated_ids)
    assert len(set(ours[0].generated_ids)) > n // 2  # a continuation that tells models apart
    assert prompt + text in out.decode(errors="replace"), (out, text)


@needs_build
def test_llama_cpp_rows_measure_a_tiny_model(gpt2_vocab_model: Path) -> None:
    report = run_bench(str(gpt2_vocab_model), rows=["llama.cpp-q8_0"], rounds=1, repeats=1, prompt_tokens=4,
                       new_tokens=4, prefill_tokens=16, llama_cpp=str(_build_dir()))
    (row,) = report.rows
    assert row.note == "" and row.metrics["decode_tps"] > 0 and row.metrics["prefill_s"] > 0
    assert row.metrics["file_mb"] > 0 and row.metrics["export_s"] > 0
    # llama-bench's own peak (a few MB of weights), not the row process's (torch, the model) carried over exec
    assert 1 < row.metrics["peak_rss_mb"] < 200
    # q8_0: the tied token table (50257 x 64) read in full at 34 bytes per 32 weights dominates
    assert 50257 * 64 * 34 / 32 < row.metrics["weight_bytes"] < 1.3 * 50257 * 64 * 34 / 32
    assert re.match(r"llama\.cpp \S+, gpt2 .*Q8_0, \d+ threads", row.info), row.info
