"""`gpt2reg --help` and the listing commands stay light: no torch, no component implementation.

Each command runs in a fresh interpreter that reports ``sys.modules`` afterwards; a heavy import at
module level anywhere on the path (a command module, a plugin's hook module) fails here. Start-up
time itself is a benchmark in the README, not a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpt2reg.plugins import get_registry

DRIVER = """
import json, sys
from gpt2reg.cli import cli
try:
    cli(sys.argv[1:], prog_name="gpt2reg")
except SystemExit:
    pass
sys.stderr.write("\\n" + json.dumps(sorted(sys.modules)))
"""

HEAVY = {"torch", "numpy", "onnx", "onnxruntime", "onnxscript", "transformers", "safetensors", "tiktoken"}


def _implementation_modules() -> set[str]:
    """The module of every registered component (built-in or plugin): imported only to build a model."""
    return {c.target_path.partition(":")[0] for c in get_registry().components()}


def modules_after(*args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the command printed nothing"
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "args", [["--help"], ["plugins"], ["plugins", "--json"], ["components"]], ids=" ".join
)
def test_command_imports_no_torch_and_no_component(args: list[str]) -> None:
    loaded = modules_after(*args)
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"`gpt2reg {' '.join(args)}` imported {', '.join(heavy[:5])}"
    implementations = _implementation_modules()
    assert "gpt2reg.components.positional" in implementations  # the check below checks something
    leaked = sorted(implementations & loaded)
    assert not leaked, f"`gpt2reg {' '.join(args)}` imported component module(s) {', '.join(leaked)}"


def test_help_loads_no_plugin_at_all() -> None:
    loaded = modules_after("--help")
    assert "gpt2reg.components" not in loaded  # not even the built-ins' hook module
    assert not any(m.startswith("gpt2reg_alibi") for m in loaded)
