"""Graph rewrites that cut the nodes of a decode step, applied to the exported graph before it is saved.

A batch-1 decode step of GPT-2 small under onnxruntime runs ~280 nodes, and at 4 ms a step (int4)
every node's dispatch counts. Per layer the exporter writes attention as Split, three
Reshape + Transpose pairs, two Concats appending the new key/value to the past, the opset-23
``Attention`` op, then Transpose + Reshape back; and each residual Add feeds a LayerNormalization.

- ``fuse_attention``: the opset-23 ``Attention`` op takes the past key/value as inputs and returns the
  presents itself, so the two Concats go; where the query/key/value are plain head splits
  (Reshape to (batch, seq, heads, head_dim), then Transpose to heads-first) and the output is merged
  back the same way, the op takes and returns (batch, seq, hidden) directly (``q_num_heads``,
  ``kv_num_heads``), so the Reshapes and Transposes go too: 10 nodes fewer per layer, standard ONNX,
  bit-identical results under onnxruntime's CPU provider. A positional encoding that rotates the
  heads (RoPE) keeps its Transposes; ALiBi's additive mask is an ordinary mask input.
- ``fuse_skip_layer_norm``: ``Add`` + ``LayerNormalization`` -> onnxruntime's
  ``SkipLayerNormalization`` (com.microsoft), which also returns the sum for the next residual. A
  contrib op, so only for files that already need onnxruntime (the quantized ones).

Each rewrite matches its exact pattern and leaves anything else as it is; validation against the
torch model checks the result like any export. Measured on the 124M int4 file (README, "ONNX export").
"""

from __future__ import annotations

import onnx_ir as ir

_HEADS_FIRST = [0, 2, 1, 3]


def _only_consumer(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and [use.node for use in value.uses()] == [node]


def _ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def _int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _past_concat(value: ir.Value, attention: ir.Node) -> ir.Node | None:
    """``Concat(past, new, axis=2)`` whose result is a present output read only by ``attention``."""
    concat = value.producer()
    if (concat is None or concat.op_type != "Concat" or concat.domain not in ("", "ai.onnx")
            or len(concat.inputs) != 2 or _int(concat, "axis", 0) not in (2, -2)):
        return None
    past = concat.inputs[0]
    if past is None or not past.is_graph_input() or not value.is_graph_output():
        return None
    if [use.node for use in value.uses()] != [attention]:
        return None
    return concat


def _head_split(value: ir.Value) -> tuple[ir.Value, int] | None:
    """``Transpose(Reshape(x), perm=[0, 2, 1, 3])`` with a known head count: (x, heads)."""
    transpose = value.producer()
    if transpose is None or transpose.op_type != "Transpose" or _ints(transpose, "perm") != _HEADS_FIRST:
        return None
    reshaped = transpose.inputs[0]
    reshape = reshaped.producer() if reshaped is not None else None
    if reshape is None or reshape.op_type != "Reshape" or not _only_consumer(reshaped, transpose):
        return None
    shape = value.shape
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        return None
    source = reshape.inputs[0]
    if source is None or source.shape is None or len(source.shape) != 3:
        return None
    return source, shape[1]


def _head_merge(value: ir.Value) -> ir.Value | None:
    """``Reshape(Transpose(value, perm=[0, 2, 1, 3]))`` to 3-D, read only there: the merged output."""
    uses = [use.node for use in value.uses()]
    if value.is_graph_output() or len(uses) != 1:
        return None
    transpose = uses[0]
    if transpose.op_type != "Transpose" or _ints(transpose, "perm") != _HEADS_FIRST:
        return None
    moved = transpose.outputs[0]
    uses = [use.node for use in moved.uses()]
    if moved.is_graph_output() or len(uses) != 1 or uses[0].op_type != "Reshape":
        return None
    merged = uses[0].outputs[0]
    return merged if merged.shape is not None and len(merged.shape) == 3 else None


def _replace(old: ir.Value, new: ir.Value) -> None:
    """``new`` takes ``old``'s place everywhere, graph outputs included, with its name, type and shape."""
    name, new.type, new.shape = old.name, old.type, old.shape
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name, new.name = None, name


def _attention_inputs(node: ir.Node) -> list[ir.Value | None]:
    return list(node.inputs) + [None] * (6 - len(node.inputs))


def fuse_attention(model: ir.Model) -> int:
    """Give each opset-23 ``Attention`` its past key/value (and 3-D inputs where it can); returns how many."""
    graph = model.graph
    fused = 0
    for attention in [n for n in graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]:
        q, k, v, mask, past_k, past_v = _attention_inputs(attention)
        if past_k is not None or past_v is not None or len(attention.outputs) != 1 or k is None or v is None:
            continue
        k_concat, v_concat = _past_concat(k, attention), _past_concat(v, attention)
        if k_concat is None or v_concat is None:
            continue
        k_new, v_new = k_concat.inputs[1], v_concat.inputs[1]
        attributes = dict(attention.attributes)
        out = attention.outputs[0]
        splits = [_head_split(x) for x in (q, k_new, v_new)]
        merged = _head_merge(out)
        removed: list[ir.Node] = []
        if all(splits) and merged is not None and _only_consumer(q, attention) \
                and _only_consumer(k_new, k_concat) and _only_consumer(v_new, v_concat):
            (q3, q_heads), (k3, kv_heads), (v3, _) = splits
            for x in (q, k_new, v_new):
                transpose = x.producer()
                removed += [transpose, transpose.inputs[0].producer()]
            move = next(iter(out.uses())).node
            removed += [move, next(iter(move.outputs[0].uses())).node]
            q, k_new, v_new = q3, k3, v3
            attributes["q_num_heads"] = ir.AttrInt64("q_num_heads", q_heads)
            attributes["kv_num_heads"] = ir.AttrInt64("kv_num_heads", kv_heads)
            out = merged
        node = ir.Node("", "Attention", [q, k_new, v_new, mask, k_concat.inputs[0], v_concat.inputs[0]],
                       attributes=attributes, num_outputs=3, name=attention.name)
        graph.insert_before(attention, node)
        for old, new in ((out, node.outputs[0]), (k, node.outputs[1]), (v, node.outputs[2])):
            _replace(old, new)
        graph.remove([attention, k_concat, v_concat, *removed], safe=True)
        fused += 1
    return fused


def fuse_skip_layer_norm(model: ir.Model) -> int:
    """``LayerNormalization(a + b)`` over the last axis -> ``SkipLayerNormalization``; returns how many."""
    graph = model.graph
    fused = 0
    for norm in [n for n in graph if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]:
        x = norm.inputs[0]
        add = x.producer() if x is not None else None
        if add is None or add.op_type != "Add" or len(norm.outputs) != 1 or _int(norm, "axis", -1) not in (-1, 2):
            continue
        a, b = add.inputs
        shapes = [v.shape for v in (a, b, x)]
        if any(s is None or len(s) != 3 for s in shapes) or a.const_value is not None or b.const_value is not None \
                or not (a.shape[-1] == b.shape[-1] == x.shape[-1] and isinstance(x.shape[-1], int)):
            continue
        epsilon = norm.attributes.get("epsilon")
        keep_sum = x.is_graph_output() or any(use.node is not norm for use in x.uses())
        node = ir.Node("com.microsoft", "SkipLayerNormalization", [a, b, *norm.inputs[1:3]],
                       attributes={"epsilon": ir.AttrFloat32("epsilon", epsilon.as_float() if epsilon else 1e-5)},
                       num_outputs=4 if keep_sum else 1, name=f"{norm.name}_skip")
        graph.insert_before(norm, node)
        _replace(norm.outputs[0], node.outputs[0])
        if keep_sum:
            _replace(x, node.outputs[3])
        graph.remove([norm, add], safe=True)
        fused += 1
    if fused:
        model.opset_imports.setdefault("com.microsoft", 1)
    return fused
