"""The torch-free side: run an exported file with numpy, onnxruntime and tiktoken only.

``OnnxGPT`` (``runtime``) reads the file's metadata (``metadata``), opens an onnxruntime session on the
provider that really loads (``providers``; ``pages`` moves its weights into huge pages) and decodes
through ``gpt2reg.decoding``'s engine (``OnnxBackend``) with ``gpt2reg.generation``'s numpy sampler. Nothing here imports torch or gpt2reg's torch modules: a
test runs it in a process where importing torch fails.
"""


from typing import Any

__all__ = ["InPlaceKV", "OnnxBackend", "OnnxGPT", "load", "onnx_engine"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI reads ``metadata``/``providers`` without paying for numpy and onnxruntime.
    if name in __all__:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'gpt2reg.ort' has no attribute '{name}'")
