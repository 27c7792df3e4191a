"""Export a GPT to ONNX: a full-sequence graph or one KV-cache decoder graph, with self-describing metadata.

The KV-cache graph follows Hugging Face Optimum's IO names (``input_ids``, ``attention_mask`` over
past+seq, ``position_ids``, ``past_key_values.{i}.key/.value`` -> ``logits``, ``present.{i}.key/.value``)
and serves both the prefill (past length 0) and the decode steps. Batch, sequence and past lengths are
symbolic: the example input uses sizes >= 2 that differ from each other, so the tracer cannot
specialise them, and the validator checks other sizes.

The tied output projection reads the token embedding (``MatMul(x, Transpose(wte))``), so the table is
stored once. For int8 and int4 the projection gets its own pre-transposed copy, which the quantizer
(``quantize``) needs and then makes the only copy: the token lookup reads the quantized head's weights.

Defaults are the fastest forms that validate, measured on onnxruntime's CPU provider (README, "ONNX
export"): opset 23, whose standard ``Attention`` op onnxruntime runs fused; int8 and int4 as
onnxruntime's block-wise weight-only ``MatMulNBits`` (8- or 4-bit weights, one scale per block,
activations quantized to int8 per block inside the kernel).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..files import check_file, staged
from ..ort.metadata import (
    BATCH,
    DEFAULT_OPSET,
    GRAPH_FULL,
    GRAPH_KV,
    KEPT,
    LOGITS_TO_KEEP,
    PAST,
    QUANTIZATIONS,
    SEQ,
    TOTAL,
    OnnxDescription,
    io_layout,
    past_names,
    present_names,
)
from .fusions import fuse_attention, fuse_group_query_attention
from .quantize import quantize_file
from .quiet import quiet

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


# Weights from this size go to ``<file>.data`` by default: onnxruntime maps such a file where it copies
# an embedded one (124M int8: a decode's peak memory 308 -> 268 MB; fp32 969 -> 699 MB; README, ONNX).
MAP_BYTES = 64 * 2**20
# Only tensors from this size go there: the large ones are pre-packed by their kernels (read once, at
# load); the small ones (biases, norms, scales) are read every step, and mapped each in its own 4 KiB
# pages instead of onnxruntime's memory (huge pages). 124M int8, one process alternating, one thread:
# 177.3 tok/CPU-s with every tensor over 1 KB mapped, 180.1 with this rule, as the embedded file (the
# difference is within the noise; a first cross-process figure, ~7%, was the processes' order).
MAPPED_TENSOR_BYTES = 512 * 2**10
PRODUCER = "gpt2reg"
_HEAD_INPUT = "head_input"  # the traced graphs' extra last output; see _add_logits_to_keep
PRODUCER_TAG = b"\x12" + bytes([len(PRODUCER)]) + PRODUCER.encode()  # protobuf: field 2 (producer_name)


class _Graph(nn.Module):
    """The model plus its output projection; ``separate_head`` gives a tied head its own transposed weight."""

    def __init__(self, model: nn.Module, separate_head: bool = False) -> None:
        super().__init__()
        self.model = model
        self.head_weight_t = None
        if separate_head and model.lm_head is None:
            self.head_weight_t = nn.Parameter(model.wte.weight.detach().t().contiguous(), requires_grad=False)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(x) if self.head_weight_t is None else x @ self.head_weight_t


class FullSequenceGraph(_Graph):
    """``input_ids`` (batch, seq) -> ``logits`` (batch, seq, vocab).

    Both graphs also return the head's input as a last output, ``_HEAD_INPUT``, which
    ``_add_logits_to_keep`` turns into the ``logits_to_keep`` slice and removes.
    """

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.model.hidden_states(input_ids)
        return self.head(x), x


class KVCacheGraph(_Graph):
    """The decoder with a KV cache, past and present flattened to one tensor per layer and key/value."""

    def forward(self, input_ids, attention_mask, position_ids, past):
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        x, presents = self.model.hidden_states(input_ids, pairs, position_ids, attention_mask)
        return (self.head(x), *[t for pair in presents for t in pair], x)


def _example_inputs(model: nn.Module, kv_cache: bool):
    """Example sizes >= 2 and pairwise different, so no dimension is specialised to its example value."""
    config = model.config
    batch, seq, past = 2, 3, 5
    if past + seq > config.block_size:
        seq, past = 2, max(config.block_size - 2, 0)
        if past < 2:
            raise InputError(f"block_size={config.block_size} is too small to export (need at least 4)")
    device = model.wte.weight.device
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    if not kv_cache:
        return (ids,), ({0: torch.export.Dim(BATCH), 1: torch.export.Dim(SEQ)},)
    mask = torch.ones(batch, past + seq, dtype=torch.long, device=device)
    positions = torch.arange(past, past + seq, device=device).expand(batch, seq)
    shape = (batch, config.n_head, past, config.head_dim)
    pasts = [torch.randn(shape, dtype=model.wte.weight.dtype, device=device) for _ in range(2 * config.n_layer)]
    b, s, p = torch.export.Dim(BATCH), torch.export.Dim(SEQ), torch.export.Dim(PAST)
    # The mask length is past + seq: left to the tracer (DYNAMIC) and named afterwards.
    dynamic = ({0: b, 1: s}, {0: b, 1: torch.export.Dim.DYNAMIC}, {0: b, 1: s}, [{0: b, 2: p} for _ in pasts])
    return (ids, mask, positions, pasts), dynamic


def _name_total_dim(onnx_model) -> None:
    """Give the attention mask's traced length (e.g. ``s53``) its meaning: past + seq, everywhere it appears."""
    import onnx_ir as ir

    graph = onnx_model.graph
    mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
    if mask is None or mask.shape is None or isinstance(mask.shape[1], int):
        return
    old = str(mask.shape[1])

    def rename(value) -> None:
        if value.shape is not None and any(not isinstance(d, int) and str(d) == old for d in value.shape):
            value.shape = ir.Shape([TOTAL if not isinstance(d, int) and str(d) == old else d for d in value.shape])

    for value in graph.inputs:
        rename(value)
    for node in graph.all_nodes():
        for value in node.outputs:
            rename(value)


def _add_logits_to_keep(onnx_model) -> None:
    """Add the ``logits_to_keep`` input: the head projects only the last k positions (0: all).

    The traced graph returns the head's input as its last output (``_HEAD_INPUT``); that output is
    removed and the head reads ``Slice(hidden, starts=-logits_to_keep, axis=1)`` instead. Slice clamps,
    so 0 (whose negation starts at position 0) and any k >= seq keep every position: Hugging Face's
    ``logits_to_keep`` semantics. A required input (see ``metadata.LOGITS_TO_KEEP``).
    """
    import numpy as np
    import onnx_ir as ir

    graph = onnx_model.graph
    hidden = graph.outputs.pop()
    if hidden.name != _HEAD_INPUT:
        raise RuntimeError(f"the traced graph's last output is {hidden.name}, not the head input")
    uses = list(hidden.uses())
    keep = ir.Value(name=LOGITS_TO_KEEP, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT64))
    graph.inputs.append(keep)

    def constant(name: str, values: list[int]) -> ir.Node:
        return ir.node("Constant", [], {"value": ir.tensor(np.array(values, dtype=np.int64), name=name)},
                       name=f"logits_to_keep_{name}")

    shape, ends, axes = constant("shape", [1]), constant("ends", [np.iinfo(np.int64).max]), constant("axes", [1])
    start = ir.node("Neg", [ir.node("Reshape", [keep, shape.outputs[0]]).outputs[0]], name="logits_to_keep_start")
    nodes = [shape, ends, axes, start.inputs[0].producer(), start]
    sliced = ir.node("Slice", [hidden, start.outputs[0], ends.outputs[0], axes.outputs[0]], name="logits_to_keep_slice")
    nodes.append(sliced)
    graph.insert_before(uses[0].node, nodes)
    for use in uses:
        use.node.replace_input_with(use.idx, sliced.outputs[0])
    hidden.name = "final_hidden_states"
    logits = graph.outputs[0]
    if logits.shape is not None:
        logits.shape = ir.Shape([logits.shape[0], KEPT, *logits.shape[2:]])


def _drop_head_input(onnx_model) -> None:
    """No ``logits_to_keep`` input: the traced graphs' extra output goes, every position gets logits."""
    import onnx_ir as ir

    graph = onnx_model.graph
    hidden = graph.outputs.pop()
    if hidden.name != _HEAD_INPUT:
        raise RuntimeError(f"the traced graph's last output is {hidden.name}, not the head input")
    hidden.name = "final_hidden_states"
    logits = graph.outputs[0]
    if logits.shape is not None:
        logits.shape = ir.Shape([logits.shape[0], SEQ, *logits.shape[2:]])


def _store_tied_once(onnx_model, parameters: set[str]) -> None:
    """Undo the optimizer's folding of ``Transpose(wte)`` into a second copy of the table.

    onnxscript's constant folding turns a small tied table's transpose into a new initializer (it
    leaves GPT-2-sized ones alone); any initializer that is not a parameter but equals a parameter's
    transpose is replaced by a ``Transpose`` of that parameter, so tied weights are stored once.
    """
    import numpy as np
    import onnx_ir as ir

    graph = onnx_model.graph
    params = [v for name, v in graph.initializers.items() if name in parameters and v.shape is not None and len(v.shape) == 2]
    for name, value in list(graph.initializers.items()):
        if name in parameters or value.shape is None or len(value.shape) != 2 or value.const_value is None:
            continue
        folded = value.const_value.numpy()
        for param in params:
            if tuple(param.shape) == folded.shape[::-1] and np.array_equal(param.const_value.numpy().T, folded):
                transpose = ir.node("Transpose", [param], {"perm": [1, 0]}, name=f"{name}_tied")
                graph.insert_before(graph.node(0), transpose)
                value.replace_all_uses_with(transpose.outputs[0])
                graph.initializers.pop(name)
                break


def _package_version() -> str:
    from .. import __version__

    return __version__


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ONNX file gpt2reg wrote (its producer name, the second field, says so).

    Reads a few bytes only: an earlier export of the same name may be replaced without --force.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return PRODUCER_TAG in head


def _check_loads(path: Path, opset: int) -> None:
    """onnxruntime must accept the file (at an opset it does not implement, the graph is refused)."""
    import re

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = str(exc)
        node = re.search(r'In Node, \("([^"]*)", (\w+),', text)
        detail = f"its {node.group(2)} node is invalid there" if node else text.split("failed:", 1)[-1].strip()[:120]
        raise InputError(f"the graph exported at opset {opset} does not load in onnxruntime {ort.__version__} "
                         f"({detail}); nothing was written; use a lower --opset (default {DEFAULT_OPSET})") from None


_GENERIC_STEMS = {"ckpt", "model", "pytorch_model", "gpt2reg"}


def default_export_path(source: str | os.PathLike, *, kv_cache: bool = True, dtype: str = "fp32",
                        quantize: str | None = None, folder: str | os.PathLike = "exports") -> Path:
    """``exports/<model name>.onnx``; the name is the model directory's (or checkpoint's, or hub repo's).

    Non-default forms get a suffix (``-full``, ``-fp16``, ``-int8``, ``-int4``) so they never overwrite each other.
    """
    path = Path(source)
    name = path.name if path.is_dir() or path.suffix == "" else path.stem
    if path.is_file() and path.stem in _GENERIC_STEMS:
        name = path.resolve().parent.name
    suffix = ("" if kv_cache else "-full") + ("" if dtype == "fp32" else f"-{dtype}") + (f"-{quantize}" if quantize else "")
    return Path(folder) / f"{name or 'model'}{suffix}.onnx"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    kv_cache: bool = True,
    opset: int = DEFAULT_OPSET,
    dtype: str = "fp32",
    quantize: str | None = None,
    model_name: str = "",
    external_data: bool | None = None,
    force: bool = False,
    verify: Callable[[Path], None] | None = None,
    logits_to_keep: bool = True,
    shared_table: bool = True,
) -> Path:
    """Export ``model`` (a ``GPT``) to ``path`` and return it; the caller's model is left unchanged.

    ``kv_cache`` picks the decoder-with-cache graph (default) or the full-sequence one; ``dtype`` is
    ``fp32`` or ``fp16``; ``quantize="int8"`` / ``"int4"`` quantizes an fp32 export's MatMul weights
    to block-wise 8- / 4-bit ``MatMulNBits`` (``quantize.RECIPES``). ``opset`` 23 (the
    default) exports attention as the standard ``Attention`` op; 18 suits runtimes without it.
    Weights go to ``<path>.data`` when ``external_data`` is True, or, by default (None), when the
    model's parameters take ``MAP_BYTES`` or more: onnxruntime then maps them instead of copying them
    (and protobuf's 2 GB limit never applies). ``model_name`` is recorded in the metadata.
    An existing file at ``path`` is replaced only if gpt2reg wrote it, or with ``force``; the file
    must load in onnxruntime, or nothing is written. ``verify(tmp_path)`` runs on the finished file
    before it is moved into place (e.g. validation); if it raises, nothing is written either.
    ``logits_to_keep=False`` leaves that input out (every position's logits): Optimum's
    ``ORTModelForCausalLM`` feeds only the inputs it knows and refuses a graph with any other.
    ``shared_table=False`` keeps a quantized file's fp32 token lookup instead of reading the head's
    quantized table (``GatherBlockQuantized``, which onnxruntime-web's WASM build does not implement).
    """
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InputError(f"unknown quantization '{quantize}'; choose int8, int4 or none")
    if quantize and dtype != "fp32":
        raise InputError(f"{quantize} quantization starts from fp32 weights: drop --dtype fp16")
    if opset < 18:
        raise InputError(f"opset {opset} is too old: the exporter needs opset 18 or newer")
    import onnx

    if opset > onnx.defs.onnx_opset_version():
        raise InputError(f"opset {opset} does not exist yet: this onnx {onnx.__version__} knows opsets up to "
                         f"{onnx.defs.onnx_opset_version()} (default {DEFAULT_OPSET})")
    path = check_file(path, what="the ONNX file", force=force, owned=is_export)
    param = next(model.parameters())
    source = model
    if param.dtype != DTYPES[dtype] or param.device.type != "cpu":
        source = copy.deepcopy(model).to(device="cpu", dtype=DTYPES[dtype])
    graph_cls = KVCacheGraph if kv_cache else FullSequenceGraph
    wrapper = graph_cls(source, separate_head=quantize is not None)
    was_training = model.training
    wrapper.eval()
    args, dynamic = _example_inputs(source, kv_cache)
    n_layer = source.config.n_layer
    inputs = ["input_ids"] + (["attention_mask", "position_ids", *past_names(n_layer)] if kv_cache else [])
    outputs = ["logits"] + (present_names(n_layer) if kv_cache else []) + [_HEAD_INPUT]
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
            )
    finally:
        model.train(was_training)
    _name_total_dim(program.model)
    (_add_logits_to_keep if logits_to_keep else _drop_head_input)(program.model)
    fuse_attention(program.model)
    in_place = False
    if quantize is None:  # quantization wants the head's own transposed copy (see the module docstring)
        _store_tied_once(program.model, {name for name, _ in wrapper.named_parameters()})
    else:  # a contrib op: only in files that need onnxruntime anyway
        in_place = kv_cache and fuse_group_query_attention(program.model) == n_layer
    description = OnnxDescription(
        graph=GRAPH_KV if kv_cache else GRAPH_FULL,
        config=source.config.to_dict(),
        dtype=dtype,
        quantize=quantize or "none",
        version=_package_version(),
        model_name=str(model_name),
        kv_in_place=in_place,
        kv_extend_rows=1 if in_place else None,
        io=io_layout(GRAPH_KV if kv_cache else GRAPH_FULL, source.config.to_dict(), dtype, logits_to_keep=logits_to_keep),
    )
    props = description.to_props()
    program.model.metadata_props.update(props)
    program.model.producer_name = PRODUCER
    program.model.producer_version = description.version
    program.model.doc_string = f"GPT-2 variant exported by gpt2reg ({description.graph}); see gpt2reg.* metadata"

    stale_data = Path(f"{path}.data")
    with staged(path.parent, what="the ONNX file") as stage:
        tmp = stage.path(path.name)
        if external_data is None:
            external_data = sum(p.numel() * p.element_size() for p in source.parameters()) >= MAP_BYTES
        if quantize is None:
            with quiet():
                if external_data:
                    import onnx_ir as ir

                    ir.save(program.model, tmp, external_data=f"{tmp.name}.data", size_threshold_bytes=MAPPED_TENSOR_BYTES)
                else:
                    program.save(tmp, external_data=False)
        else:
            fp32 = stage.extra(f"{tmp.stem}-fp32.onnx")
            with quiet():
                program.save(fp32)
            quantize_file(quantize, fp32, tmp, props, external=external_data, shared_table=shared_table,
                          size_threshold=MAPPED_TENSOR_BYTES, producer=PRODUCER)
        _check_loads(tmp, opset)
        if verify is not None:
            verify(tmp)
        written_data = stage.temp.joinpath(stale_data.name).exists()
    if not written_data and stale_data.exists():
        stale_data.unlink()  # left from an earlier, larger export of the same name
    return path
