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
- ``fuse_group_query_attention``: the 3-D fused ``Attention`` -> onnxruntime's ``GroupQueryAttention``
  (com.microsoft, so the quantized files only), which writes the KV cache in place when the caller
  binds each present to its past's buffer; see its docstring for the one call shape it refuses. RoPE's
  rotated heads-first q and k go in moved back to (batch, seq, hidden); the rotation stays as exported.

Not fused: a residual ``Add`` + ``LayerNormalization`` into onnxruntime's ``SkipLayerNormalization``.
Its CPU kernel is a scalar loop (onnxruntime 1.31): ~3 µs a row of 768 against ~0.6 µs for the pair,
so a 16-row decode step of 124M int8 spent 1.5 ms (9%) in it instead of 0.6 ms, while one row
gains nothing from the fusion (docs/serving.md, "Speed").

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


def _const(name: str, values, dtype) -> ir.Node:
    import numpy as np

    return ir.node("Constant", [], {"value": ir.tensor(np.array(values, dtype=dtype), name=name)},
                   outputs=[ir.Value(name=name)], name=name)


def _op(op: str, inputs: list, name: str, attributes: dict | None = None, domain: str = "",
        outputs: int = 1) -> ir.Node:
    """A node whose outputs carry names of their own, unique in the graph."""
    names = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
    return ir.node(op, inputs, attributes or {}, domain=domain, outputs=[ir.Value(name=n) for n in names],
                   name=name)


def _packed_split(q: ir.Value, k: ir.Value, v: ir.Value, attention: ir.Node) -> ir.Node | None:
    """The ``Split`` of one 3-D tensor into exactly ``q, k, v`` (equal thirds on the last axis), read
    only by ``attention``: GroupQueryAttention takes its input packed."""
    split = q.producer()
    if split is None or split.op_type != "Split" or split.domain not in ("", "ai.onnx") or list(split.outputs) != [q, k, v]:
        return None
    packed = split.inputs[0]
    if (packed is None or packed.shape is None or len(packed.shape) != 3 or _int(split, "axis", 0) not in (2, -1)
            or len(split.inputs) > 1 and split.inputs[1] is not None or _int(split, "num_outputs", 3) != 3):
        return None
    return split if all(_only_consumer(x, attention) for x in (q, k, v)) else None


class _GQAShared:
    """The values every GroupQueryAttention of a graph shares, computed once per run from the input shapes."""

    def __init__(self, graph: ir.Graph, mask: ir.Value, ids: ir.Value) -> None:
        import numpy as np

        self.graph, self.first = graph, graph.node(0)
        batch = _op("Shape", [mask], "gqa_batch", {"end": 1})
        total = _op("Shape", [mask], "gqa_total", {"start": 1})
        seq = _op("Shape", [ids], "gqa_seq", {"start": 1, "end": 2})
        one32 = _const("gqa_one32", [1], np.int32)
        cast = _op("Cast", [total.outputs[0]], "gqa_total32", {"to": ir.DataType.INT32})
        last = _op("Sub", [cast.outputs[0], one32.outputs[0]], "gqa_last")
        seqlens = _op("Expand", [last.outputs[0], batch.outputs[0]], "gqa_seqlens_k")
        # The past's real length (a buffer may be longer): what the graph read from the past's shape.
        past_length = _op("Sub", [total.outputs[0], seq.outputs[0]], "gqa_past_length")
        graph.insert_before(self.first, [batch, total, seq, one32, cast, last, seqlens, past_length])
        self.past_length = past_length.outputs[0]
        self.seqlens_k, self.total_sequence_length = seqlens.outputs[0], cast.outputs[0]
        self._biases: dict[int, ir.Value] = {}

    def bias(self, mask: ir.Value, dtype: ir.DataType) -> ir.Value:
        """The mask as GroupQueryAttention's additive ``attention_bias``: a bool mask -> 0 / -inf, once."""
        import numpy as np

        if mask.dtype != ir.DataType.BOOL:
            return mask
        if id(mask) not in self._biases:
            np_type = dtype.numpy()
            zero = _const(f"gqa_bias_zero_{len(self._biases)}", 0, np_type)
            neg = _const(f"gqa_bias_neg_{len(self._biases)}", -np.inf, np_type)
            where = _op("Where", [mask, zero.outputs[0], neg.outputs[0]], f"gqa_attention_bias_{len(self._biases)}")
            self.graph.insert_before(self.first, [zero, neg])
            producer = mask.producer()
            if producer is None:
                self.graph.insert_before(self.first, where)
            else:
                self.graph.insert_after(producer, where)
            self._biases[id(mask)] = where.outputs[0]
        return self._biases[id(mask)]


def _past_length_reads(pasts: set[ir.Value], attentions: list[ir.Node]) -> list[ir.Node] | None:
    """The ``Shape`` nodes that read the past's length (axis 2), which a buffer with room would
    falsify; None when a past has another reader than ``attentions`` and shapes of other axes."""
    reads = []
    for past in pasts:
        for use in past.uses():
            node = use.node
            if node in attentions:
                continue
            if node.op_type != "Shape" or node.domain not in ("", "ai.onnx"):
                return None
            start, end = _int(node, "start", 0), _int(node, "end", 4)
            if (start, end) == (2, 3):
                reads.append(node)
            elif not (0 <= start < end <= 2):
                return None
    return reads


def _geometry(attention: ir.Node) -> tuple[int, int, int] | None:
    """(heads, kv_heads, head_dim) of an Attention on 3-D inputs (its attributes count the heads) or on
    4-D heads-first ones whose output is merged back to 3-D (RoPE rotates q and k before the op)."""
    q, k, v = attention.inputs[:3]
    if any(x is None or x.shape is None for x in (q, k, v)):
        return None
    if len(q.shape) == 3:
        heads, kv_heads = _int(attention, "q_num_heads", 0), _int(attention, "kv_num_heads", 0)
        if not heads or not kv_heads or not isinstance(q.shape[2], int) or q.shape[2] % heads:
            return None
        return heads, kv_heads, q.shape[2] // heads
    dims = [q.shape[1], q.shape[3], k.shape[1], k.shape[3]] if len(q.shape) == len(k.shape) == 4 else []
    if not dims or not all(isinstance(d, int) for d in dims) or v.shape != k.shape or q.shape[3] != k.shape[3] \
            or _head_merge(attention.outputs[0]) is None:
        return None
    return q.shape[1], k.shape[1], q.shape[3]


def _gqa_candidate(attention: ir.Node) -> bool:
    """A fused Attention that GroupQueryAttention computes the same way: q/k/v with past and mask,
    heads of a multiple of 8, default output mode (the exporter's attention is causal: its mask says so)."""
    if len(attention.inputs) != 6 or len(attention.outputs) != 3 or any(x is None for x in attention.inputs):
        return False
    geometry, mask = _geometry(attention), attention.inputs[3]
    if geometry is None or _int(attention, "is_causal", 0) or _int(attention, "qk_matmul_output_mode", 0):
        return False
    heads, kv_heads, head_dim = geometry
    if heads % kv_heads or head_dim % 8 or mask.shape is None or len(mask.shape) != 4:
        return False
    return mask.dtype == ir.DataType.BOOL or mask.dtype == attention.inputs[0].dtype


def _three_d(graph: ir.Graph, attention: ir.Node, bsh: ir.Value) -> ir.Node:
    """A heads-first Attention -> the same op on (batch, seq, hidden), as ``fuse_attention`` makes for
    plain head splits: rotated q and k are moved back (Transpose, Reshape to ``bsh`` = [0, 0, -1]), a
    plain v split gives its source, and the output's merge goes. GroupQueryAttention takes these."""
    heads, kv_heads, head_dim = _geometry(attention)
    q, k, v, *rest = attention.inputs
    removed: list[ir.Node] = [attention]
    split = _head_split(v) if _only_consumer(v, attention) else None
    inputs = []
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x is v and split is not None:
            transpose = v.producer()
            removed += [transpose, transpose.inputs[0].producer()]
            inputs.append(split[0])
            continue
        moved = _op("Transpose", [x], f"{attention.name}_{name}_bshd", {"perm": _HEADS_FIRST})
        flat = _op("Reshape", [moved.outputs[0], bsh], f"{attention.name}_{name}_bsh")
        count = heads if x is q else kv_heads
        flat.outputs[0].type, flat.outputs[0].shape = x.type, ir.Shape([x.shape[0], x.shape[2], count * head_dim])
        graph.insert_before(attention, [moved, flat])
        inputs.append(flat.outputs[0])
    merged = _head_merge(attention.outputs[0])
    move = next(iter(attention.outputs[0].uses())).node
    removed += [move, next(iter(move.outputs[0].uses())).node]
    attributes = {**attention.attributes, "q_num_heads": ir.AttrInt64("q_num_heads", heads),
                  "kv_num_heads": ir.AttrInt64("kv_num_heads", kv_heads)}
    node = ir.Node("", "Attention", [*inputs, *rest], attributes=attributes, num_outputs=3, name=attention.name)
    graph.insert_before(attention, node)
    for old, new in zip((merged, *attention.outputs[1:]), node.outputs, strict=True):
        _replace(old, new)
    graph.remove(removed, safe=True)
    return node


def fuse_group_query_attention(model: ir.Model) -> int:
    """Each fused 3-D opset-23 ``Attention`` -> onnxruntime's ``GroupQueryAttention``; returns how many.

    GroupQueryAttention appends the new key/value to the past itself and, when the caller binds the
    present to the past's own buffer (onnxruntime's IOBinding), writes them in place: the past may
    then have spare room along axis 2 (its real length is ``attention_mask``'s minus the new tokens),
    and nothing is copied. Given a past of exact length it returns past + new as the Attention op
    did. It takes the packed QKV projection (the Split goes), ``seqlens_k`` = total - 1 for every row
    and ``total_sequence_length`` from ``attention_mask``'s shape (left padding: every row's total is
    past + seq), and the mask as an additive bias, computed once per graph. Its own causal mask only
    repeats the exporter's. It refuses a call that extends a past by several tokens in a batch of
    several rows; nothing that decodes makes one (a prompt runs without a past, a step adds one token),
    so such files say so in their metadata (``kv_extend_rows``) and the runtime refuses that call
    with a clear error, rather than every layer paying for an ``If`` around the op (measured: docs/onnx.md).

    RoPE rotates q and k before the op, heads-first: those go in moved back to (batch, seq, hidden)
    (``_three_d``), rotated by the exported nodes. GroupQueryAttention's own rotary (``do_rotary``) is
    not used: in onnxruntime 1.31 (CPU) it honours ``position_ids`` per row and token only after a
    past; a call without one rotates every row at ``position_ids[0, 0]`` + 0, 1, ..., which left
    padding breaks (and it wants head sizes of a multiple of 16).
    """
    import numpy as np

    graph = model.graph
    attentions = [n for n in graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    mask_input = next((v for v in graph.inputs if v.name == "attention_mask"), None)
    ids = next((v for v in graph.inputs if v.name == "input_ids"), None)
    if not attentions or not all(map(_gqa_candidate, attentions)) or mask_input is None or ids is None:
        return 0
    pasts = {x for n in attentions for x in n.inputs[4:6]}
    reads = _past_length_reads(pasts, attentions)
    if reads is None or not all(p.is_graph_input() for p in pasts):
        return 0
    if any(len(a.inputs[0].shape) == 4 for a in attentions):
        bsh = _const("gqa_bsh", [0, 0, -1], np.int64)
        graph.insert_before(graph.node(0), bsh)
        attentions = [_three_d(graph, a, bsh.outputs[0]) if len(a.inputs[0].shape) == 4 else a for a in attentions]
    shared = _GQAShared(graph, mask_input, ids)
    for shape in reads:
        shape.outputs[0].replace_all_uses_with(shared.past_length)
    graph.remove(reads, safe=True)
    for attention in attentions:
        q, k, v, mask, past_k, past_v = attention.inputs
        split = _packed_split(q, k, v, attention)
        attributes = {"num_heads": ir.AttrInt64("num_heads", _int(attention, "q_num_heads", 0)),
                      "kv_num_heads": ir.AttrInt64("kv_num_heads", _int(attention, "kv_num_heads", 0))}
        for name in ("scale", "softcap"):
            attr = attention.attributes.get(name)
            if attr is not None and attr.as_float():
                attributes[name] = ir.AttrFloat32(name, attr.as_float())
        gqa = ir.node("GroupQueryAttention",
                      [*([split.inputs[0], None, None] if split is not None else [q, k, v]), past_k, past_v,
                       shared.seqlens_k, shared.total_sequence_length, None, None, None, shared.bias(mask, q.dtype)],
                      attributes, domain="com.microsoft", num_outputs=3, name=attention.name)
        graph.insert_before(attention, gqa)
        for old, new in zip(attention.outputs, gqa.outputs, strict=True):
            _replace(old, new)
        graph.remove([attention, *([split] if split is not None else [])], safe=True)
    model.opset_imports.setdefault("com.microsoft", 1)
    return len(attentions)
