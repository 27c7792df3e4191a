"""Shared fixtures: tiny configs so the suite stays fast; full-size runs only where size matters."""

from __future__ import annotations

import os

import pytest
import torch

from gpt2reg.testing import TINY

# Kernel decisions for tiny test models stay in memory, never in the user's cache (tests of the cache
# point it at a temporary file).
os.environ.setdefault("GPT2REG_KERNEL_CACHE", "off")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: a worker using every core's threads only oversubscribes
    # them (tiny-model tests ran ~6x slower that way).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _one_torchlib_registry():
    """Speed only: torch's exporter rebuilds its torchlib op registry (~0.3 s) on every export; the exports
    here share one per set of arguments (gpt2reg registers no ops of its own in it). Without the private
    hook the tests run as they are, only slower."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:
        yield
        return
    original = ONNXRegistry.__dict__.get("from_torchlib")
    if not isinstance(original, classmethod):
        yield
        return
    cache: dict[str, object] = {}

    def from_torchlib(cls, *args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original.__func__(cls, *args, **kwargs)
        return cache[key]

    ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        ONNXRegistry.from_torchlib = original


@pytest.fixture
def tiny_config():
    from gpt2reg.config import GPTConfig

    return GPTConfig(**TINY)


def _fingerprint(obj, digest, values: bool = True) -> None:
    """Feed ``obj`` to ``digest``: tensors by dtype, device, shape and (``values``) bytes; containers item by
    item; the rest by repr."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        digest.update(f"T{t.dtype}{t.device}{tuple(t.shape)}".encode())
        if values:
            digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__}{len(obj)}(".encode())
        for item in obj:
            _fingerprint(item, digest, values)
        digest.update(b")")
    elif isinstance(obj, dict):
        digest.update(f"dict{len(obj)}(".encode())
        for k in sorted(obj, key=repr):
            digest.update(repr(k).encode())
            _fingerprint(obj[k], digest, values)
        digest.update(b")")
    else:
        digest.update(repr(obj).encode())


def _trace_key(model: torch.nn.Module, args, kwargs: dict) -> tuple:
    """Everything ``torch.onnx.export`` reads: each submodule's name, class, attributes, parameters and
    buffers (values included), the functions of those classes (a patched method is a new key), the example
    inputs' dtypes and shapes and the export options. The example inputs' values are left out: gpt2reg
    draws them at random for every export, and a graph with dynamic shapes does not depend on them (two
    plain exports of one model are byte for byte the same)."""
    import hashlib

    digest = hashlib.sha256()
    code = []
    for name, module in model.named_modules():
        digest.update(f"M{name}:{type(module).__module__}.{type(module).__qualname__}".encode())
        # parameters, buffers, hooks, config and any other attribute (submodules come in their own turn)
        _fingerprint({k: v for k, v in vars(module).items() if k != "_modules"}, digest)
        for cls in type(module).__mro__:
            if cls not in (torch.nn.Module, object):
                code.extend((cls, key, value if _hashable(value) else id(value)) for key, value in vars(cls).items())
    _fingerprint(args, digest, values=False)
    _fingerprint(kwargs, digest)
    return digest.hexdigest(), tuple(code)


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


_TRACED: dict[tuple, tuple] = {}  # trace_each_model_once's graphs, shared by the modules that use it


@pytest.fixture(scope="module")
def trace_each_model_once():
    """Speed only: in the modules using it, ``torch.onnx.export`` (tracing: 1-3 s a call on a tiny model)
    runs once per distinct model, example inputs and options, and a repeated call gets a fresh copy of
    that graph; gpt2reg's own steps after the trace (fusions, quantization, metadata, saving, validation) run
    on every export as usual, and the files are byte for byte those of a new trace. The key
    (``_trace_key``) holds the values of every parameter and buffer and the classes and methods of every
    submodule: only for modules whose tests patch nothing else a trace reads (module-level functions of
    the model code are not in the key). Without onnx_ir's private name counters (kept so that names given
    after the trace are the same) every export traces, as without this fixture."""
    import copy

    import onnx_ir as ir
    import torch.onnx

    original, traced = torch.onnx.export, _TRACED

    def export(model, args=(), **kwargs):
        key = _trace_key(model, args, kwargs)
        if key not in traced:
            program = original(model, args, **kwargs)
            authority = getattr(program.model.graph, "_name_authority", None)
            if authority is None:
                return program
            traced[key] = ir.to_proto(program.model), copy.deepcopy(authority)
        proto, authority = traced[key]
        onnx_model = ir.from_proto(proto)
        onnx_model.graph._name_authority = copy.deepcopy(authority)
        return torch.onnx.ONNXProgram(onnx_model, None)

    torch.onnx.export = export
    try:
        yield
    finally:
        torch.onnx.export = original
