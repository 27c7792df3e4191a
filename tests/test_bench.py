"""`gpt2reg bench` smoke test on a tiny model: every row runs, the table and the ratios come out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY

import gpt2reg
from gpt2reg.bench import BenchReport, BenchSpec, Row
from gpt2reg.cli import cli


def test_bench_runs_every_row_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the row processes: a tiny model gains nothing from threads
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
    ratio = rows["gpt2reg"]["metrics"]["decode_tps"] / rows["transformers"]["metrics"]["decode_tps"]
    assert rows["gpt2reg"]["vs_baseline"]["decode_tps"] == pytest.approx(ratio)
    assert report["machine"]["cpus"] >= 1 and report["machine"]["torch"]


def test_table_shows_ratios_and_skipped_rows() -> None:
    report = BenchReport(
        spec=BenchSpec(model="m"),
        machine={"cpu": "cpu", "cpus": 2, "memory_gb": 8, "os": "os", "python": "3", "torch": "2",
                 "torch_threads": 2, "date": "2026-11-23"},
        rows=[
            Row("gpt2reg", {"decode_tps": 50.0, "prefill_s": 1.0}),
            Row("transformers", {"decode_tps": 25.0, "prefill_s": 1.5}),
            Row("onnxruntime", note="skipped: onnxruntime not installed"),
        ],
        baseline="transformers",
        rounds=1,
    )
    text = report.format()
    gpt2reg_line = next(line for line in text.splitlines() if line.startswith("gpt2reg"))
    assert "2.00x" in gpt2reg_line and "1.50x" in gpt2reg_line  # decode faster x2, prefill 1.5x faster
    assert "(skipped: onnxruntime not installed)" in text


def test_unknown_row_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--rows", "nope"])
    assert result.exit_code == 1 and "unknown bench row 'nope'" in result.output
