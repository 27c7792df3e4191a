"""The training rows of `gpt2reg bench`: gpt2reg and GPT2LMHeadModel steps in the same run, and the FLOP count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import gpt2reg
from benchmarks.training_rows import flops_per_token, measure_training
from gpt2reg.cli import cli
from gpt2reg.config import GPTConfig
from gpt2reg.errors import CheckpointError
from gpt2reg.testing import TINY


def test_flops_per_token_of_gpt2_small_matches_the_palm_accounting() -> None:
    # 6 x 123.5M matmul parameters (no position table) + 12 x 12 layers x 1024 x 768 attention = 854 MFLOP.
    assert flops_per_token(GPTConfig(), 1024) == pytest.approx(854.4e6, rel=1e-3)


def test_bench_training_rows_compare_with_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    gpt2reg.save_model(gpt2reg.build_model(**TINY, seed=0), tmp_path / "tiny")
    result = CliRunner().invoke(cli, ["bench", str(tmp_path / "tiny"), "--rows", "gpt2reg-train,transformers-train",
                                      "--rounds", "1", "--repeats", "2", "--train-batch", "2", "--train-seq", "16",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["rows"]}
    assert report["baseline"] == "transformers-train"
    for row in rows.values():
        assert row["note"] == "" and row["metrics"]["train_tps"] > 0 and "mfu" not in row["metrics"]  # CPU: no MFU
    ours, theirs = rows["gpt2reg-train"]["metrics"]["train_tps"], rows["transformers-train"]["metrics"]["train_tps"]
    assert rows["gpt2reg-train"]["vs_baseline"]["train_tps"] == pytest.approx(ours / theirs)


def test_a_config_transformers_cannot_express_is_refused() -> None:
    pytest.importorskip("transformers")
    with pytest.raises(CheckpointError, match="no equivalent of pos=rope"):
        measure_training("transformers", GPTConfig(**TINY, pos="rope"), batch_size=1, seq_len=8, steps=1)
