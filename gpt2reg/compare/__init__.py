"""``gpt2reg compare``: train architecture variants side by side on the same data and budget, and report
which is better, by how much, whether the difference is real, and how each deploys.

    spec.py     variants (axes, explicit settings, TOML), seeds, shared settings; run folders; train commands
    runner.py   runs every variant x seed as a ``gpt2reg train`` process (resumable, --jobs, torchrun)
    stats.py    final losses, mean/std over seeds, Welch's t-test against the baseline
    report.py   results.json/.csv, report.md, one self-contained report.html, the loss plot
    deploy.py   ONNX export, validation under onnxruntime and decode speed, per variant

Python::

    from gpt2reg.compare import Comparison, grid, parse_variant, run_comparison
    comparison = Comparison("cmp", grid({"pos": ["learned", "rope"]}) + [parse_variant("pos=rope,lr=3e-3")],
                            settings={"data": "poems.txt", "n_layer": 4, "max_steps": 300}, seeds=2)
    results = run_comparison(comparison, jobs=2)
"""

from __future__ import annotations

from typing import Any

__all__ = ["Comparison", "Variant", "grid", "parse_variant", "load_toml", "train_command", "run_comparison",
           "build_report", "print_commands"]

_LAZY = {"Comparison": "spec", "Variant": "spec", "grid": "spec", "parse_variant": "spec", "load_toml": "spec",
         "train_command": "spec", "run_comparison": "runner", "print_commands": "runner", "build_report": "report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gpt2reg.compare' has no attribute '{name}'")
