"""A run killed with SIGKILL and resumed logs exactly the losses of an uninterrupted run; Ctrl-C saves.

Real processes, real signals: the training command runs as ``python -m gpt2reg train`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt2reg.training.metrics import read_metrics

VERSE = "Whose woods these are I think I know.\nHis house is in the village though;\n"
ARGS = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "2",
        "--lr", "3e-3", "--warmup-steps", "3", "--eval-interval", "4", "--eval-batches", "1",
        "--dropout", "0.1",  # so the dropout RNG must be restored too
        "--sample-tokens", "0", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def command(corpus: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpt2reg", "train", "--data", str(corpus), "-o", str(run), *ARGS, *extra]


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 120.0) -> int:
    """Poll the log until it records ``step``; returns the last step seen (the process must still run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = read_metrics(metrics)
        if records and records[-1]["step"] >= step:
            assert proc.poll() is None, "the run ended before it could be interrupted; raise --max-steps"
            return records[-1]["step"]
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no step {step} within {timeout} s")


@pytest.mark.slow  # three training processes; Ctrl-C's checkpoint and resume stay in the default tier
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    corpus = tmp_path / "verse.txt"
    corpus.write_text(VERSE * 30)
    steps = "40"
    reference = subprocess.run(command(corpus, tmp_path / "ref", "--max-steps", steps), env=ENV,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    expected = read_metrics(tmp_path / "ref" / "metrics.jsonl")

    run = tmp_path / "run"
    proc = subprocess.Popen(command(corpus, run, "--max-steps", steps), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, run / "metrics.jsonl", 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list((run / "checkpoints").glob("step-*.pt")) and not (run / "model").exists()

    resumed = subprocess.run([sys.executable, "-m", "gpt2reg", "train", "-o", str(run), "--resume", "--no-progress"],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, int(steps) + 1))  # the steps after the checkpoint, once
    assert [r["loss"] for r in got] == [r["loss"] for r in expected]  # bit for bit
    assert [r.get("val_loss") for r in got] == [r.get("val_loss") for r in expected]
    ref_model = torch.load(tmp_path / "ref" / "checkpoints" / f"step-{int(steps):06d}.pt", weights_only=True)
    new_model = torch.load(run / "checkpoints" / f"step-{int(steps):06d}.pt", weights_only=True)
    assert all(torch.equal(ref_model["model"][k], v) for k, v in new_model["model"].items())


def test_ctrl_c_saves_a_checkpoint_and_the_model_then_exits(tmp_path: Path) -> None:
    corpus = tmp_path / "verse.txt"
    corpus.write_text(VERSE * 30)
    run = tmp_path / "run"
    proc = subprocess.Popen(command(corpus, run, "--max-steps", "1000", "--json"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, run / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads(out)
    stopped = summary["steps"]
    assert summary["interrupted"] and 3 <= stopped < 1000
    assert (run / "checkpoints" / f"step-{stopped:06d}.pt").exists()
    assert (run / "model" / "model.safetensors").exists()
    assert read_metrics(run / "metrics.jsonl")[-1]["step"] == stopped
