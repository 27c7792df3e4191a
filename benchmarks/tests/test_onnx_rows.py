"""`gpt2reg bench` ONNX Runtime rows on a tiny model: export time, file size and speed come out."""

from __future__ import annotations

from pathlib import Path

import pytest

import gpt2reg
from benchmarks.bench import run_bench
from gpt2reg.testing import TINY


def test_onnxruntime_row_reports_export_size_and_speed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    gpt2reg.save_model(gpt2reg.build_model(**TINY, seed=0), tmp_path / "tiny")
    report = run_bench(str(tmp_path / "tiny"), rows=["onnxruntime-int8"], rounds=1, repeats=1,
                       prompt_tokens=4, new_tokens=4, prefill_tokens=16)
    (row,) = report.rows
    assert row.note == "", row.note
    metrics = row.metrics
    assert metrics["decode_tps"] > 0 and metrics["prefill_s"] > 0 and metrics["load_s"] > 0
    assert metrics["pages_s"] >= 0  # the move into huge pages, timed apart from the load
    assert metrics["export_s"] > 0 and 0.005 < metrics["file_mb"] < 5
    assert "export s" in report.format() and "file MB" in report.format()
