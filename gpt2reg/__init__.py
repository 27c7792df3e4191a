"""gpt2reg: GPT-2 assembled from a registry of pluggable components.

The package root stays light: torch is imported only when a model is made, so the torch-free
runtime and ``gpt2reg --help`` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import GPTConfig
from .errors import (
    CheckpointError,
    ConfigError,
    Gpt2regError,
    InputError,
    OutputError,
    PluginError,
    UnknownComponentError,
)
from .hookspecs import hookimpl
from .plugins import get_registry, list_plugins, register_plugin, unregister_plugin

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .model import GPT

__all__ = [
    "GPTConfig",
    "GPT",
    "build_model",
    "load_model",
    "save_model",
    "get_tokenizer",
    "generate",
    "GenerationOptions",
    "hookimpl",
    "get_registry",
    "list_plugins",
    "register_plugin",
    "unregister_plugin",
    "plugin_registered",
    "Gpt2regError",
    "ConfigError",
    "CheckpointError",
    "PluginError",
    "InputError",
    "OutputError",
    "UnknownComponentError",
    "TrainConfig",
    "train",
    "evaluate",
    "export_onnx",
    "validate_onnx",
]

# name -> module that defines it; imported on first access (PEP 562) to keep `import gpt2reg` light.
_LAZY = {
    "GPT": "model",
    "build_model": "model",
    "load_model": "checkpoints",
    "save_model": "checkpoints",
    "get_tokenizer": "tokenizer",
    "plugin_registered": "plugins",
    "generate": "generation",
    "GenerationOptions": "generation",
    "TrainConfig": "training",
    "train": "training",
    "evaluate": "training",
    "export_onnx": "onnx",
    "validate_onnx": "onnx",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gpt2reg' has no attribute '{name}'")
