"""`gpt2reg bench` smoke test on a tiny model: every row runs, the table and the ratios come out."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import gpt2reg
from benchmarks.bench import BenchReport, BenchSpec, Row, run_bench
from gpt2reg.cli import cli
from gpt2reg.testing import TINY


def test_bench_runs_every_row_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the row processes: a tiny model gains nothing from threads
    monkeypatch.delenv("GPT2REG_LLAMA_CPP", raising=False)  # a user's llama.cpp build would add its rows
    model_dir = tmp_path / "tiny"
    gpt2reg.save_model(gpt2reg.build_model(**TINY, seed=0), model_dir)
    result = CliRunner().invoke(cli, [
        "bench", str(model_dir), "--rounds", "1", "--repeats", "1",
        "--prompt-tokens", "4", "--new-tokens", "4", "--prefill-tokens", "16", "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"gpt2reg", "transformers"} and report["baseline"] == "transformers"
    for row in rows.values():
        assert row["note"] == "", row["note"]
        assert row["metrics"]["decode_tps"] > 0 and row["metrics"]["prefill_s"] > 0
        assert 50 < row["metrics"]["peak_rss_mb"] < 4000
    assert rows["transformers"]["vs_baseline"]["decode_tps"] == pytest.approx(1.0)
    # both read the same weights per token: every parameter but one row of each position table
    model = gpt2reg.load_model(model_dir)
    expected = 4 * (model.num_parameters() - (TINY["block_size"] - 1) * TINY["n_embd"])
    assert rows["gpt2reg"]["metrics"]["weight_bytes"] == rows["transformers"]["metrics"]["weight_bytes"] == expected
    assert report["read_gbps"] > 0
    for row in rows.values():
        gbps = row["metrics"]["weight_bytes"] * row["metrics"]["decode_tps"] / 1e9
        assert row["achieved_gbps"] == pytest.approx(gbps)
        assert row["bound_fraction"] == pytest.approx(gbps / report["read_gbps"])
    assert rows["gpt2reg"]["info"].startswith("linear kernels: 1 row: ")
    ratio = rows["gpt2reg"]["metrics"]["decode_tps"] / rows["transformers"]["metrics"]["decode_tps"]
    assert rows["gpt2reg"]["vs_baseline"]["decode_tps"] == pytest.approx(ratio)
    assert report["machine"]["cpus"] >= 1 and report["machine"]["torch"]
    # no --threads: each row says what its engine chose
    assert report["machine"]["threads"] is None and all(row["metrics"]["threads"] >= 1 for row in rows.values())


MACHINE = {"cpu": "cpu", "cpus": 2, "physical_cores": 2, "memory_gb": 8, "os": "os", "python": "3", "torch": "2",
           "torch_threads": 2, "threads": None, "date": "2026-11-23"}


def test_table_shows_ratios_bandwidth_and_skipped_rows() -> None:
    report = BenchReport(
        spec=BenchSpec(model="m"),
        machine=MACHINE,
        rows=[
            Row("gpt2reg", {"decode_tps": 50.0, "prefill_s": 1.0, "weight_bytes": 400e6}, info="linear kernels: x"),
            Row("transformers", {"decode_tps": 25.0, "prefill_s": 1.5}),
            Row("onnxruntime", note="skipped: onnxruntime not installed"),
        ],
        baseline="transformers",
        rounds=1,
        read_gbps=25.0,
        read_threads=2,
    )
    text = report.format()
    assert "threads: each engine's default (torch 2, onnxruntime 2 = one per core" in text
    assert "threads: 3 in every row" in replace(report, machine={**MACHINE, "threads": 3}).format()
    gpt2reg_line = next(line for line in text.splitlines() if line.startswith("gpt2reg "))
    assert "2.00x" in gpt2reg_line and "1.50x" in gpt2reg_line  # decode faster x2, prefill 1.5x faster
    # 400 MB/token x 50 tokens/s = 20 GB/s, 80% of a 25 GB/s read
    assert " 400 " in gpt2reg_line and " 20.0 " in gpt2reg_line and " 80% " in gpt2reg_line
    assert "streaming read 25.0 GB/s" in text and "gpt2reg: linear kernels: x" in text
    assert "(skipped: onnxruntime not installed)" in text
    assert report.bound_fraction(report.rows[1]) is None  # no weight_bytes: no bound


def test_training_only_table_has_no_decode_line() -> None:
    report = BenchReport(BenchSpec(model="m"), MACHINE, [Row("gpt2reg-train", {"train_tps": 100.0})], None, 1)
    text = report.format()
    assert "train:" in text and "decode:" not in text and "GB/s" not in text


def test_peak_rss_is_the_row_process_own(tmp_path: Path) -> None:
    """A row process is exec'd by a bench that may have held the model: ru_maxrss carries the parent's
    peak over exec, VmHWM does not. A process that touched 400 MB execs a small one."""
    if not Path("/proc/self/status").exists():
        pytest.skip("VmHWM is Linux's")
    child = "from benchmarks.bench import _peak_rss_mb; print(_peak_rss_mb())"
    parent = (f"import os, sys; big = bytearray(400 * 2**20); os.execv(sys.executable, [sys.executable, '-c', {child!r}])")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout
    assert float(out) < 300


def test_unknown_row_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--rows", "nope"])
    assert result.exit_code == 1 and "unknown bench row 'nope'" in result.output


FAKE_CONVERTER = """
import sys
import gguf
import numpy as np
writer = gguf.GGUFWriter(sys.argv[sys.argv.index("--outfile") + 1], "gpt2")
writer.add_context_length(128)
writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
"""

FAKE_LLAMA_BENCH = """
import json, sys
arg = lambda flag: sys.argv[sys.argv.index(flag) + 1]
prompt, new = (int(x) for x in arg("-pg").split(","))
tests = [(int(arg("-p")), 0), (prompt, new)]
print(json.dumps([{"n_threads": int(arg("-t")), "n_prompt": p, "n_gen": n, "n_depth": 0, "samples_ns": [1000000]}
                  for p, n in tests]))
"""


# a decode that holds 150 MB (every page written), so its measured peak is known
FAKE_LLAMA_SIMPLE = """
memory = bytearray(150 * 2**20)
memory[::4096] = bytes(len(range(0, len(memory), 4096)))
"""


def _fake_llama_cpp(root: Path) -> Path:
    """A llama.cpp build whose llama-bench reports the -t it was given (and a tiny GGUF to read)."""
    (root / "bin").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    for name, code in (("llama-bench", FAKE_LLAMA_BENCH), ("llama-quantize", ""), ("llama-simple", FAKE_LLAMA_SIMPLE)):
        tool = root / "bin" / name
        tool.write_text(f"#!{sys.executable}\n{code}")
        tool.chmod(0o755)
    return root


@pytest.mark.slow  # every row kind in its own process at 3 threads; the default tier runs each row once
def test_threads_option_reaches_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads 3 (no machine's default count for every engine) in the torch, transformers, training,
    onnxruntime and llama.cpp rows and the bandwidth probe, as each reports what it ran with."""
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gguf")
    monkeypatch.delenv("GPT2REG_LLAMA_CPP", raising=False)
    model_dir = tmp_path / "tiny"
    gpt2reg.save_model(gpt2reg.build_model(**TINY, seed=0), model_dir)
    rows = ["gpt2reg", "transformers", "gpt2reg-train", "onnxruntime", "llama.cpp-f32"]
    report = run_bench(str(model_dir), rows=rows, rounds=1, repeats=1, prompt_tokens=4, new_tokens=4,
                       prefill_tokens=16, train_batch=1, train_seq=8, threads=3,
                       llama_cpp=str(_fake_llama_cpp(tmp_path / "llama.cpp")))
    assert {row.name: (row.note, row.metrics.get("threads")) for row in report.rows} == {name: ("", 3) for name in rows}
    # the decode alone, in a fresh process, measured the same way for each engine's decode rows
    decode = {row.name: row.metrics.get("decode_rss_mb") for row in report.rows if "decode_tps" in row.metrics}
    assert decode["transformers"] is None and 150 < decode["llama.cpp-f32"] < 190  # the fake decode's 150 MB
    assert all(20 < decode[name] < 2000 for name in ("gpt2reg", "onnxruntime")), decode
    assert report.read_threads == 3 and report.machine["threads"] == 3
    assert "threads: 3 in every row (--threads)" in report.format()
    assert report.to_dict()["machine"]["threads"] == 3
