"""Weight-only quantization of an exported fp32 file: block-wise ``MatMulNBits``, the tied table stored once.

Every MatMul whose weight is an initializer becomes onnxruntime's ``MatMulNBits`` (8- or 4-bit
weights in blocks along the input dimension, one fp32 scale per block; ``RECIPES``). The exporter
gives a tied output head its own pre-transposed copy of the token table, because the quantizer only
quantizes a MatMul whose weight is an initializer. Once quantized, that head's packed weights
(``B``: (vocab, blocks, block bytes)) are the token table too, block-quantized row by row: the input
lookup becomes ``GatherBlockQuantized`` (com.microsoft) on the same initializer, and the fp32 table
goes (``_share_tied_table``). So the table is stored once, quantized, as llama.cpp stores it; a
learned position table stays fp32 (it is small and only looked up).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from .quiet import quiet


@dataclass(frozen=True)
class NBitsRecipe:
    """One ``MatMulNBits`` quantization: weights in blocks along the input dimension, one fp32 scale per
    block (and a zero point unless symmetric); accuracy level 4 lets onnxruntime's CPU kernel quantize
    the activations to int8 and multiply in int8 (levels 0/1 multiply in fp32)."""

    bits: int
    block: int = 128  # the largest block; see block_for
    symmetric: bool = True
    accuracy_level: int = 4

    def block_for(self, input_sizes: list[int]) -> int:
        """``block``, halved (down to 16) until it divides every weight's input size: a row's last
        partial block is padded to full size, bytes stored and read for nothing."""
        block = self.block
        while block > 16 and any(k % block for k in input_sizes):
            block //= 2
        return block


# Measured on the 124M model (README, "ONNX export"; AMD EPYC Zen 4, onnxruntime 1.31, one thread, CPU
# time): 8-bit blocks of 128 decode 1.2-1.5x faster than onnxruntime's dynamic quantization
# (MatMulInteger, per-tensor weights) and move the logits half as much; 8-bit blocks of 32 or 64 are
# slower, of 256 no faster, accuracy level 0 (fp32 compute on 8-bit weights) ~50x slower. 4-bit
# blocks of 256 (onnxruntime's largest) decode 1.15-1.3x faster than blocks of 128, and those 1.4x
# faster than blocks of 32: the kernel's per-block work, not the scales' few bytes, decides.
# Symmetric is as fast as asymmetric and was as good or better on the trained poem model.
RECIPES: dict[str, NBitsRecipe] = {"int8": NBitsRecipe(bits=8, block=128), "int4": NBitsRecipe(bits=4, block=256)}


def quantize_file(quantize: str, src: Path, dst: Path, props: dict[str, str], *, external: bool,
                  size_threshold: int, producer: str, shared_table: bool = True) -> None:
    """Quantize the fp32 file ``src`` into ``dst`` (``RECIPES[quantize]``), with ``props`` as its metadata;
    ``external`` puts its tensors of ``size_threshold`` bytes or more in ``<dst>.data``; ``shared_table``
    stores a tied token table once (else the lookup keeps its fp32 table)."""
    import onnx

    model = onnx.load(str(src))
    tied = _tied_table(model.graph) if shared_table else None
    model = _quantize_nbits(RECIPES[quantize], model)
    if tied is not None:
        _share_tied_table(model.graph, *tied)
    model.producer_name = producer
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    with quiet():
        onnx.save_model(model, str(dst), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=f"{dst.name}.data", size_threshold=size_threshold)
    data = dst.with_name(f"{dst.name}.data")
    if data.exists():  # onnx writes it through a private temporary file (mode 0600): give it the graph's mode
        data.chmod(stat.S_IMODE(dst.stat().st_mode))


def _quantize_nbits(recipe: NBitsRecipe, model):
    """onnxruntime's block-wise weight-only quantization: every constant-weight MatMul -> ``MatMulNBits``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    weights = {t.name: t for t in model.graph.initializer}
    sizes = [weights[n.input[1]].dims[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    config = DefaultWeightOnlyQuantConfig(block_size=recipe.block_for(sizes), is_symmetric=recipe.symmetric,
                                          bits=recipe.bits, accuracy_level=recipe.accuracy_level,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    with quiet():  # after the import, whose logging.basicConfig(level=INFO) would undo it
        quantizer.process()
    return quantizer.model.model


def _tied_table(graph) -> tuple[str, str] | None:
    """(the token table, the head's output) where a ``Gather`` reads a 2-D fp32 table whose transpose
    is the weight of a ``MatMul``: the exporter's separate copy of a tied head. None for an untied model."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    weights = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in weights}
    for node in graph.node:
        head = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        for table in tables if head is not None else ():
            if list(weights[table].dims) == list(head.dims)[::-1] and np.array_equal(
                    numpy_helper.to_array(weights[table]).T, numpy_helper.to_array(head)):
                return table, node.output[0]
    return None


def _share_tied_table(graph, table: str, head_output: str) -> None:
    """Every ``Gather`` of ``table`` reads the quantized head's weights instead (``GatherBlockQuantized``)
    and ``table`` goes; nothing changes unless the head is a symmetric ``MatMulNBits``.

    ``GatherBlockQuantized`` takes the head's ``B`` as it is, (vocab, blocks, block bytes), quantized
    along its last axis in one block per row of that axis (so the scales are reshaped to (vocab,
    blocks, 1)), and returns (batch, seq, blocks, block): reshaped to (batch, seq, blocks * block),
    then cut to n_embd where the last block is padded. Symmetric blocks' implicit zero point
    (2^(bits-1)) is the same in both ops.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and list(n.output) == [head_output]), None)
    if head is None or len(head.input) > 3 and head.input[3]:
        return
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    vocab, n_embd, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
    blocks = -(-n_embd // block)
    padded = blocks * block != n_embd
    name = "tied_embedding"
    constants = {f"{name}_scales_shape": [vocab, blocks, 1], f"{name}_shape": [0, 0, blocks * block]}
    if padded:
        constants.update({f"{name}_start": [0], f"{name}_end": [n_embd], f"{name}_axes": [-1]})
    kept = [t for t in graph.initializer if t.name != table]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    shared = [helper.make_node("Constant", [], [k], name=k, value=numpy_helper.from_array(np.array(v, np.int64), k))
              for k, v in constants.items()]
    shared.append(helper.make_node("Reshape", [head.input[2], f"{name}_scales_shape"], [f"{name}_scales"],
                                   name=f"{name}_scales"))
    for i, gather in enumerate([n for n in graph.node if n.op_type == "Gather" and n.input[0] == table]):
        out, rows = gather.output[0], f"{name}_{i}_rows"
        nodes = shared if i == 0 else []
        nodes += [
            helper.make_node("GatherBlockQuantized", [head.input[1], gather.input[1], f"{name}_scales"],
                             [f"{name}_{i}_blocks"], name=f"{name}_{i}", domain="com.microsoft", bits=bits,
                             block_size=block, gather_axis=0, quantize_axis=2),
            helper.make_node("Reshape", [f"{name}_{i}_blocks", f"{name}_shape"], [rows if padded else out],
                             name=f"{name}_{i}_rows"),
        ]
        if padded:
            nodes.append(helper.make_node("Slice", [rows, f"{name}_start", f"{name}_end", f"{name}_axes"], [out],
                                          name=f"{name}_{i}_cut"))
        at = list(graph.node).index(gather)
        graph.node.remove(gather)
        for j, node in enumerate(nodes):
            graph.node.insert(at + j, node)
