"""The CLI: thin commands over the API, one-line errors, nothing written on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpt2reg.cli import cli

TINY_ARGS = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "64", "--vocab-size", "96"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_components_json_lists_every_kind() -> None:
    code, out = run("components", "--json")
    assert code == 0
    data = json.loads(out)
    assert {"pos", "act", "norm"} <= set(data)
    rope = next(c for c in data["pos"] if c["name"] == "rope")
    assert rope["plugin"] == "gpt2reg" and rope["description"]


@pytest.mark.parametrize("extra,expected", [([], 124_439_808), (["--pos", "rope"], 123_653_376)])
def test_build_gpt2_small(tmp_path: Path, extra: list[str], expected: int) -> None:
    code, out = run("build", *extra, "-o", str(tmp_path / "m"), "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["parameters"] == expected
    # tied embedding stored once: the file is about the parameters' fp32 bytes
    assert summary["bytes_on_disk"] < expected * 4 * 1.01


def test_build_then_info(tmp_path: Path) -> None:
    out_dir = tmp_path / "tiny"
    code, out = run("build", "--pos", "rope", "--act", "swiglu", "--norm", "rmsnorm", *TINY_ARGS, "-o", str(out_dir))
    assert code == 0, out
    assert "rope (gpt2reg)" in out and "swiglu" in out and "parameters" in out
    code, out = run("info", str(out_dir), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["config"]["pos"] == "rope" and info["config"]["n_layer"] == 2
    assert {f.name for f in out_dir.iterdir()} == {"gpt2reg.json", "model.safetensors"}


def test_build_refuses_non_empty_directory_without_force(tmp_path: Path) -> None:
    out_dir = tmp_path / "m"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("keep me")
    code, out = run("build", *TINY_ARGS, "-o", str(out_dir))
    assert code == 1 and "--force" in out
    assert [p.name for p in out_dir.iterdir()] == ["notes.txt"]
    code, out = run("build", *TINY_ARGS, "-o", str(out_dir), "--force")
    assert code == 0, out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--pos", "rotary"], "unknown positional encoding 'rotary'; choose one of: "),
        (["--act", "gelu2"], "unknown activation 'gelu2'; choose one of: "),
        (["--n-embd", "100", "--n-head", "12"], "n_embd=100 is not divisible by n_head=12"),
        (["--pos", "rope", "--n-embd", "30", "--n-head", "6"], "RoPE needs an even head size"),
    ],
)
def test_bad_build_is_one_line_error_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out_dir = tmp_path / "m"
    code, out = run("build", *args, "-o", str(out_dir))
    assert code == 1
    assert out.startswith("Error: ") and message in out and out.count("\n") == 1
    assert not out_dir.exists()


def test_from_pretrained_rejects_architecture_options(tmp_path: Path) -> None:
    code, out = run("build", "--from-pretrained", "gpt2", "--pos", "rope", "-o", str(tmp_path / "m"))
    assert code == 2 and "drop pos" in out


def test_python_m_runs_the_same_cli_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpt2reg", "info", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("Error: ")
