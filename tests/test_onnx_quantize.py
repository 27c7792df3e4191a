"""Quantized exports store the tied token table once, quantized: the head's MatMulNBits weights, which the
input lookup reads through GatherBlockQuantized (``gpt2reg.onnx.quantize``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from gpt2reg.model import build_model
from gpt2reg.onnx import export_onnx, validate_onnx
from gpt2reg.onnx.quantize import RECIPES
from gpt2reg.ort.metadata import QUANTIZATIONS
from gpt2reg.testing import component_names

SMALL = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=101)
# Exports that repeat a model (another quantization, a fusion turned off) reuse its trace (conftest.py).
pytestmark = pytest.mark.usefixtures("trace_each_model_once")


def _lookups(path: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """What onnxruntime's lookup returns for ``ids``, the head's weights dequantized by hand (rows = tokens),
    and the head's attributes."""
    model = onnx.load(str(path))
    graph = model.graph
    lookup = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == lookup.input[0])
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in head.input[1:3]}
    packed, scales = weights[head.input[1]], weights[head.input[2]].reshape(attrs["N"], -1, 1)
    if attrs["bits"] == 4:  # two weights a byte, the first in the low nibble
        packed = np.stack((packed & 0x0F, packed >> 4), axis=-1).reshape(*packed.shape[:2], -1)
    table = ((packed.astype(np.float32) - 2 ** (attrs["bits"] - 1)) * scales).reshape(attrs["N"], -1)[:, : attrs["K"]]
    embedding = lookup.output[0]  # (batch, seq, blocks, block) -> reshaped to rows (and cut to n_embd)
    while (node := next(n for n in graph.node if embedding in n.input)).op_type in ("Reshape", "Slice"):
        embedding = node.output[0]
    graph.output.append(helper.make_value_info(embedding, helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None],
            "logits_to_keep": np.array(1, np.int64)}
    feed.update({i.name: np.zeros([d if isinstance(d, int) else (1 if d == "batch_size" else 0) for d in i.shape],
                                  np.float32) for i in session.get_inputs() if i.name.startswith("past_key_values")})
    return session.run([embedding], feed)[0], table, attrs


@pytest.mark.parametrize("pos", component_names("pos"))
def test_quantized_file_stores_the_tied_table_once_and_is_smaller_than_fp32(tmp_path: Path, pos: str) -> None:
    model = build_model(**SMALL, pos=pos, seed=4)
    table = model.wte.weight.detach().numpy()
    sizes = {"fp32": export_onnx(model, tmp_path / "fp32.onnx").stat().st_size}
    ids = np.array([[0, 7, 100, 7, 55]])
    for quantize in QUANTIZATIONS:
        path = export_onnx(model, tmp_path / f"{quantize}.onnx", quantize=quantize)
        sizes[quantize] = path.stat().st_size
        graph = onnx.load(str(path)).graph
        assert not [t.dims for t in graph.initializer if list(t.dims) == list(table.shape)]  # no fp32 table
        assert [n.op_type for n in graph.node].count("GatherBlockQuantized") == 1  # positions: a Gather, fp32
        rows, dequantized, attrs = _lookups(path, ids)
        assert attrs["bits"] == RECIPES[quantize].bits and attrs["N"] == SMALL["vocab_size"]
        np.testing.assert_allclose(rows[0], dequantized[ids[0]], rtol=0, atol=1e-6)  # the head's own weights
        level = np.abs(table).max(axis=1, keepdims=True) / 2 ** (attrs["bits"] - 1)  # one block a row here
        assert np.all(np.abs(dequantized - table) <= level)  # the token table, within one quantization level
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"], sizes


def test_padded_blocks_are_cut_to_the_embedding_width(tmp_path: Path) -> None:
    """n_embd 24: blocks of 16 (onnxruntime's smallest), the last padded; the lookup returns 24 values."""
    model = build_model(**{**SMALL, "n_embd": 24}, seed=5)
    path = export_onnx(model, tmp_path / "m.onnx", quantize="int4")
    assert validate_onnx(path, model, provider="cpu", cases=3).passed
    rows, dequantized, attrs = _lookups(path, np.array([[3, 1, 4]]))
    assert attrs["block_size"] == 16 and rows.shape == (1, 3, 24)
    np.testing.assert_allclose(rows[0], dequantized[[3, 1, 4]], rtol=0, atol=1e-6)


def test_untied_model_keeps_its_fp32_table_and_quantizes_its_head(tmp_path: Path) -> None:
    model = build_model(**SMALL, tie_embeddings=False, seed=6)
    path = export_onnx(model, tmp_path / "m.onnx", quantize="int8")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "GatherBlockQuantized" not in ops and ops.count("MatMulNBits") == 4 * SMALL["n_layer"] + 1
    assert validate_onnx(path, model, provider="cpu", cases=3).passed


def test_weights_from_map_bytes_go_to_a_data_file_that_onnxruntime_maps(tmp_path: Path, monkeypatch) -> None:
    import gpt2reg.onnx.export as export_module

    model = build_model(**SMALL, seed=7)
    weights = 4 * model.num_parameters()
    monkeypatch.setattr(export_module, "MAPPED_TENSOR_BYTES", 1024)  # the tiny model's matrices: 4-16 KB
    for quantize in (None, "int8"):
        monkeypatch.setattr(export_module, "MAP_BYTES", weights + 1)
        one = export_onnx(model, tmp_path / "one" / "m.onnx", quantize=quantize)
        monkeypatch.setattr(export_module, "MAP_BYTES", weights)
        two = export_onnx(model, tmp_path / "two" / "m.onnx", quantize=quantize)
        assert [p.name for p in one.parent.iterdir()] == ["m.onnx"]
        assert sorted(p.name for p in two.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
        assert Path(f"{two}.data").stat().st_mode == two.stat().st_mode  # others who can load the graph can read it
        moved = Path(f"{two}.data").stat().st_size  # the weights
        assert moved > 10_000 and one.stat().st_size - two.stat().st_size >= 0.9 * moved
        assert validate_onnx(two, model, provider="cpu", cases=2).passed
