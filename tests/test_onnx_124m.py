"""The full-size export: GPT-2 small (124M) to the KV-cache graph, tied weights stored once, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2reg.model import build_model
from gpt2reg.onnx import export_onnx, validate_onnx


@pytest.mark.slow
def test_124m_kv_cache_export_is_one_copy_of_the_weights_and_matches_torch(tmp_path: Path) -> None:
    model = build_model(seed=0)
    path = export_onnx(model, tmp_path / "gpt2.onnx")
    fp32_bytes = 4 * model.num_parameters()  # 124,439,808 parameters, the tied table counted once
    size = path.stat().st_size
    assert not Path(f"{path}.data").exists()  # under 2 GB: one self-contained file
    assert fp32_bytes <= size <= 1.02 * fp32_bytes, f"{size / fp32_bytes:.4f}x the parameters' fp32 bytes"
    report = validate_onnx(path, model, provider="cpu", cases=7)  # lengths 1, 7, 100, 1024; past 0..1023; padding
    assert {c["seq"] for c in report.cases} >= {1, 7, 100, 1024}
    assert report.passed and report.max_abs_diff <= 1e-4, report.summary()
