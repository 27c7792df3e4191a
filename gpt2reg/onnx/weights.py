"""How many bytes of weights an exported file reads per decoded token: what bounds batch-1 decoding.

Every initializer a step multiplies with is read whole; a table that is only looked up (``Gather``:
the token and position embeddings) gives one row per token, which is negligible and not counted. The
sizes come from the file's tensor shapes and types, so weights in ``<file>.onnx.data`` are not read.
Torch-free, like the runtime.
"""

from __future__ import annotations

import os

_LOOKUPS = {"Gather", "GatherBlockQuantized"}


def weight_bytes_per_token(path: str | os.PathLike) -> int:
    """Bytes of the initializers a batch-1 decode step reads, excluding tables used only by lookups."""
    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(path), load_external_data=False).graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for tensor in graph.initializer:
        ops = consumers.get(tensor.name, set())
        if not ops or ops <= _LOOKUPS:
            continue
        itemsize = np.dtype(tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total
