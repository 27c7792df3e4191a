"""onnxruntime sessions on the execution provider that really runs, never the one merely asked for.

onnxruntime-gpu on a machine without a usable CUDA logs an error and silently runs on the CPU. Here
``auto`` takes CUDA when it really loads and says when it fell back; ``cuda`` fails with the reason.
Torch-free: the runtime uses this too.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass, field

from ..errors import Gpt2regError, InputError, first_line
from . import pages

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CHOICES = ("auto", "cuda", "cpu")


class ProviderError(Gpt2regError):
    """An execution provider that was asked for and cannot run here."""


@dataclass
class SessionInfo:
    """The session and what happened when it was made."""

    session: object  # onnxruntime.InferenceSession
    provider: str  # session.get_providers()[0]: the provider that actually runs
    requested: str  # auto, cuda or cpu
    note: str = ""  # e.g. why auto fell back to the CPU
    memory: list[pages.Region] = field(default_factory=list)  # CPU: what the session allocated (``pages``)


def _cuda_load_error() -> str:
    """Why the CUDA provider library does not load (the missing CUDA/cuDNN library), best effort."""
    import onnxruntime as ort

    name = "onnxruntime_providers_cuda.dll" if sys.platform == "win32" else "libonnxruntime_providers_cuda.so"
    path = os.path.join(os.path.dirname(ort.__file__), "capi", name)
    if not os.path.exists(path):
        return f"{name} is not in this onnxruntime"
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        return str(exc)
    return "no usable CUDA device"


def conflicting_installs() -> list[str]:
    """Distributions that all provide the ``onnxruntime`` module; more than one breaks it unpredictably."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            found.append(dist)
        except metadata.PackageNotFoundError:
            pass
    return found if len(found) > 1 else []


def cuda_listed() -> bool:
    """Whether this onnxruntime build has a CUDA provider at all (onnxruntime-gpu)."""
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def _session(path: str, options, providers: list[str], huge_pages: bool) -> tuple[object, list[pages.Region]]:
    """``InferenceSession`` and, on the CPU, the memory it allocated (its weights), with a file
    onnxruntime cannot read reported in one line.

    That memory is put in huge pages now (``huge_pages``), else only advised to be (``pages``).
    """
    import onnxruntime as ort

    before = pages.anonymous_regions()
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
        memory = pages.new_regions(before) if session.get_providers()[0] == CPU else []
        (pages.collapse if huge_pages else pages.advise)(memory)
        return session, memory
    except (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NoSuchFile) as exc:
        raise InputError(f"{path}: onnxruntime cannot load it ({first_line(exc)[-300:]})") from None


def create_session(path: str, provider: str = "auto", *, threads: int | None = None,
                   huge_pages: bool = True, spinning: bool = True) -> SessionInfo:
    """An ``InferenceSession`` for ``path`` on ``provider`` (``auto``, ``cuda`` or ``cpu``).

    ``huge_pages``: on the CPU, move the session's memory into 2 MiB pages before returning (faster
    decoding, slower load: ``pages``); False only advises it, and ``pages.collapse(info.memory)`` moves
    it later. ``spinning=False``: intra-op threads sleep between operators instead of busy-waiting, for
    a process whose other threads need the cores too (the server's event loop and sampler).
    """
    import onnxruntime as ort

    if provider not in CHOICES:
        raise ProviderError(f"unknown provider '{provider}'; choose one of: {', '.join(CHOICES)}")
    both = conflicting_installs()
    if both:
        raise ProviderError(f"{' and '.join(both)} are both installed and share the module name; "
                            "uninstall both, then install one (onnxruntime-gpu on CUDA machines)")
    options = ort.SessionOptions()
    # All graph optimizations: onnxruntime fuses Gelu, the quantized MatMuls' biases and more
    # when the session starts; onnxruntime.transformers' offline optimizer adds nothing to our opset-23
    # graph (README). Intra-op threads default to the physical cores, the fastest for batch-1 decoding.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Errors only: onnxruntime warns on every load of a gpt2reg 0.1 file that ``logits_to_keep``'s
    # default (an initializer that is also a graph input, ONNX's overridable default) is not a constant.
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if provider == "cpu" or (provider == "auto" and not cuda_listed()):
        session, memory = _session(path, options, [CPU], huge_pages)
        note = "" if provider == "cpu" else "CUDA not in this onnxruntime build; running on CPU"
        return SessionInfo(session, session.get_providers()[0], provider, note, memory)
    if not cuda_listed():
        raise ProviderError(
            f"CUDA requested but this onnxruntime ({ort.__version__}) has no CUDA provider; "
            "install onnxruntime-gpu on a CUDA machine, or use --provider cpu"
        )
    # A failed CUDA load is logged as an error even when we fall back on purpose: we report it ourselves.
    ort.set_default_logger_severity(4)
    try:
        session, memory = _session(path, options, [CUDA, CPU], huge_pages)
    finally:
        ort.set_default_logger_severity(2)
    actual = session.get_providers()[0]
    if actual == CUDA:
        return SessionInfo(session, actual, provider)
    reason = _cuda_load_error()
    if provider == "cuda":
        raise ProviderError(f"CUDA execution provider cannot load ({reason}); use --provider cpu or auto")
    return SessionInfo(session, actual, provider, f"CUDA provider did not load ({reason}); fell back to CPU", memory)
