"""ONNX export of any registry-assembled GPT, and its validation against torch under onnxruntime.

``export_onnx`` and ``validate_onnx`` import torch; they are loaded on first access so that the
torch-free pieces (``metadata``, ``providers``) used by ``gpt2reg.ort.runtime`` stay torch-free.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_onnx", "validate_onnx", "ValidationReport", "OnnxDescription", "ProviderError", "TOLERANCES"]

_LAZY = {
    "export_onnx": "export",
    "validate_onnx": "validate",
    "ValidationReport": "validate",
    "TOLERANCES": "validate",
    "OnnxDescription": "..ort.metadata",
    "ProviderError": "..ort.providers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = _LAZY[name]
        return getattr(importlib.import_module(module if module.startswith(".") else f".{module}", __name__), name)
    raise AttributeError(f"module 'gpt2reg.onnx' has no attribute '{name}'")
