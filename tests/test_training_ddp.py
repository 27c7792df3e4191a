"""Distributed data parallel through torchrun: two CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2reg.training.metrics import read_metrics


@pytest.mark.slow  # two torchrun processes importing torch
def test_torchrun_two_processes_train_in_sync(tmp_path: Path) -> None:
    corpus = tmp_path / "verse.txt"
    corpus.write_text("Tyger Tyger, burning bright,\nIn the forests of the night;\n" * 40)
    run = tmp_path / "run"
    steps, batch, seq = 4, 2, 16
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gpt2reg", "train", "--data", str(corpus), "-o", str(run),
           "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--seq-len", str(seq),
           "--batch-size", str(batch), "--max-steps", str(steps), "--eval-interval", "2", "--eval-batches", "1",
           "--dropout", "0.1", "--lr", "1e-2", "--sample-tokens", "4", "--no-progress", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # only rank 0 prints
    assert summary["world_size"] == 2
    # Synchronised gradients: both ranks hold the same weights (each rank hashed its own).
    digests = summary["weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # each step logged once
    assert records[-1]["tokens"] == steps * 2 * batch * seq  # both processes' batches count
    assert (run / "samples.txt").read_text().count("--- step") == 2  # written once, by rank 0
    assert (run / "model" / "model.safetensors").exists()
