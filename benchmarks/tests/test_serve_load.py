"""The serve load benchmark on a tiny export: it runs and reports ratios (never absolute times)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2reg.model import build_model
from gpt2reg.onnx import export_onnx


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[None, Path]:
    model = build_model(n_layer=2, n_head=2, n_embd=32, block_size=1024, vocab_size=50257, pos="rope", init_std=0.2,
                        seed=0)
    return None, export_onnx(model, tmp_path_factory.mktemp("serve") / "tiny.onnx")


def test_bench_compares_the_server_with_generate_in_one_run(tiny) -> None:
    from benchmarks.serve_load import run

    figures = run(str(tiny[1]), clients=4, tokens=8, rounds=1, churn_seconds=1)
    assert figures["clients"] == 4 and figures["tokens"] == 8 and figures["cpu"]
    assert figures["generate_ms_per_token"] > 0 and figures["server_ms_per_token"] > 0
    assert figures["concurrent_tokens_per_s"] > 0 and figures["speedup"] > 0  # ratios only: the machine is shared
    assert figures["server_cpu_ms_per_token_single"] >= 0 and figures["server_cpu_ms_per_token_concurrent"] >= 0
    assert figures["cpu_speedup"] is None or figures["cpu_speedup"] > 0
    assert figures["churn_tokens_per_s"] > 0  # requests of varied lengths, one after another
