"""What an exported file says about itself, in ONNX ``metadata_props``: enough to run it with nothing else.

Torch-free: the exporter writes these keys, ``gpt2reg.ort.runtime`` and the validator read them.

Keys (all strings; the JSON ones parse with ``json.loads``):

- ``gpt2reg.format``: ``gpt2reg-onnx`` (so a consumer can tell our files from others);
- ``gpt2reg.version``: the gpt2reg version that wrote the file;
- ``gpt2reg.graph``: ``kv_cache`` or ``full_sequence``;
- ``gpt2reg.config``: the model config as JSON (``GPTConfig.to_dict()``);
- ``gpt2reg.io``: the inputs and outputs as JSON ``{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}``
  with symbolic dimensions named ``batch_size``, ``sequence_length``, ``past_sequence_length``,
  ``logits_length``; every input listed must be fed (``logits_to_keep``: 0 for every position);
- ``gpt2reg.dtype``: ``fp32`` or ``fp16`` (of the floating inputs/outputs: past and present, logits);
- ``gpt2reg.quantize``: ``none``, ``int8`` or ``int4``;
- ``gpt2reg.tokenizer``: ``gpt2`` (tiktoken's GPT-2 BPE), ``gpt2reg.eos_token_id``: ``50256``;
- ``gpt2reg.model_name``: where the weights came from, as given to the exporter;
- ``gpt2reg.kv_in_place``: ``true`` where the graph extends the KV cache in place (onnxruntime's
  ``GroupQueryAttention``, the quantized files): a past may have spare room along axis 2 (its real
  length is ``attention_mask``'s minus the new tokens) and a present bound to the past's own buffer
  (IOBinding) is written there, nothing copied; a present not bound so has the larger of past + seq
  and the past's length. Absent (``false``) elsewhere: pasts of exact length, presents new arrays.
- ``gpt2reg.kv_extend_rows``: ``1`` where a call that extends a non-empty past by more than one token
  may hold one row only (GroupQueryAttention, in the files that extend the cache in place, refuses it
  for several; decoding never makes such a call: a prompt has no past, a step adds one token).
  Absent: any batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FORMAT = "gpt2reg-onnx"
QUANTIZATIONS = ("int8", "int4")  # the values of gpt2reg.quantize besides "none"
# The opset files are written at unless asked otherwise (the exporter's default; here so the CLI can
# show it without importing torch). 18 suits runtimes that lack the opset-23 Attention op.
DEFAULT_OPSET = 23
GRAPH_KV = "kv_cache"
GRAPH_FULL = "full_sequence"

# Symbolic dimension names, as Hugging Face Optimum writes them.
BATCH = "batch_size"
SEQ = "sequence_length"
PAST = "past_sequence_length"
TOTAL = f"{PAST} + {SEQ}"
KEPT = "logits_length"  # positions whose logits are returned: min(logits_to_keep, seq), or seq for 0

# The scalar int64 input saying how many of the last positions get logits (Hugging Face's
# ``logits_to_keep``): 0 keeps all; generation asks for 1. A required graph input (every runtime,
# onnxruntime-node's included, lists it and can feed it; an initializer-backed default made onnxruntime
# warn on every load and hid it from JS). Files for other people's software (``gpt2reg.onnx.folder``)
# and exports older than the input lack it and return every position (``OnnxGPT`` reads the session's
# inputs to know); files of gpt2reg 0.1 had it with a default of 0 (an overridable initializer).
LOGITS_TO_KEEP = "logits_to_keep"


def past_names(n_layer: int) -> list[str]:
    """``past_key_values.{i}.key`` / ``.value`` for every layer, in graph input order."""
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    """``present.{i}.key`` / ``.value`` for every layer, in graph output order."""
    return [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def io_layout(graph: str, config: dict[str, Any], dtype: str, *,
              logits_to_keep: bool = True) -> dict[str, list[dict[str, Any]]]:
    """The graph's inputs and outputs with their dtypes and (symbolic) shapes; without the
    ``logits_to_keep`` input every position gets logits, ``sequence_length`` of them."""
    float_t = "float16" if dtype == "fp16" else "float32"
    heads, head_dim = config["n_head"], config["n_embd"] // config["n_head"]
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": [BATCH, SEQ]}]
    outputs = [{"name": "logits", "dtype": float_t, "shape": [BATCH, KEPT if logits_to_keep else SEQ, config["vocab_size"]]}]
    if graph == GRAPH_KV:
        inputs += [
            {"name": "attention_mask", "dtype": "int64", "shape": [BATCH, TOTAL]},
            {"name": "position_ids", "dtype": "int64", "shape": [BATCH, SEQ]},
        ]
        inputs += [{"name": n, "dtype": float_t, "shape": [BATCH, heads, PAST, head_dim]}
                   for n in past_names(config["n_layer"])]
        outputs += [{"name": n, "dtype": float_t, "shape": [BATCH, heads, TOTAL, head_dim]}
                    for n in present_names(config["n_layer"])]
    if logits_to_keep:
        inputs.append({"name": LOGITS_TO_KEEP, "dtype": "int64", "shape": []})
    return {"inputs": inputs, "outputs": outputs}


@dataclass(frozen=True)
class OnnxDescription:
    """The parsed ``gpt2reg.*`` metadata of an exported file."""

    graph: str
    config: dict[str, Any]
    dtype: str = "fp32"
    quantize: str = "none"
    version: str = ""
    tokenizer: str = "gpt2"
    eos_token_id: int = 50256
    model_name: str = ""
    io: dict[str, Any] = field(default_factory=dict)
    kv_in_place: bool = False
    kv_extend_rows: int | None = None  # the most rows of a call extending a past by several tokens; None: any

    @property
    def kv_cache(self) -> bool:
        return self.graph == GRAPH_KV

    @property
    def n_layer(self) -> int:
        return int(self.config["n_layer"])

    @property
    def block_size(self) -> int:
        return int(self.config["block_size"])

    @property
    def variant(self) -> str:
        """``fp32``, ``fp16``, ``int8`` or ``int4``: what decides the validation tolerance."""
        return self.dtype if self.quantize == "none" else self.quantize

    def to_props(self) -> dict[str, str]:
        return {
            "gpt2reg.format": FORMAT,
            "gpt2reg.version": self.version,
            "gpt2reg.graph": self.graph,
            "gpt2reg.config": json.dumps(self.config, sort_keys=True),
            "gpt2reg.io": json.dumps(self.io or io_layout(self.graph, self.config, self.dtype)),
            "gpt2reg.dtype": self.dtype,
            "gpt2reg.quantize": self.quantize,
            "gpt2reg.tokenizer": self.tokenizer,
            "gpt2reg.eos_token_id": str(self.eos_token_id),
            "gpt2reg.model_name": self.model_name,
        } | ({"gpt2reg.kv_in_place": "true"} if self.kv_in_place else {}) | (
            {"gpt2reg.kv_extend_rows": str(self.kv_extend_rows)} if self.kv_extend_rows is not None else {})

    def check_io(self, session: Any, source: str = "the file") -> None:
        """``ValueError`` (one line) unless ``session``'s graph has the inputs and outputs a gpt2reg export of
        this config has: a foreign graph under copied metadata would otherwise fail deep inside onnxruntime."""
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        try:
            want = io_layout(self.graph, self.config, self.dtype, logits_to_keep=LOGITS_TO_KEEP in inputs)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"{source} has damaged gpt2reg metadata: its config lacks {exc}") from None
        for kind, have, need in (("inputs", inputs, want["inputs"]), ("outputs", outputs, want["outputs"])):
            need_names = [x["name"] for x in need]
            if sorted(have) != sorted(need_names):
                missing = [n for n in need_names if n not in have]
                extra = [n for n in have if n not in need_names]
                raise ValueError(
                    f"{source}: its graph's {kind} are not those of a gpt2reg export of its config "
                    f"({self.graph}, n_layer={self.config.get('n_layer')})"
                    + (f"; missing: {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "") if missing else "")
                    + (f"; not ours: {', '.join(extra[:4])}" + (" ..." if len(extra) > 4 else "") if extra else "")
                    + "; export it again with gpt2reg export")

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "the file") -> OnnxDescription:
        """Parse metadata; ``ValueError`` naming ``source`` when it is not a gpt2reg export."""
        if props.get("gpt2reg.format") != FORMAT:
            raise ValueError(f"{source} is not a gpt2reg ONNX export (no gpt2reg.format metadata)")
        try:
            return cls(
                graph=props["gpt2reg.graph"],
                config=json.loads(props["gpt2reg.config"]),
                dtype=props.get("gpt2reg.dtype", "fp32"),
                quantize=props.get("gpt2reg.quantize", "none"),
                version=props.get("gpt2reg.version", ""),
                tokenizer=props.get("gpt2reg.tokenizer", "gpt2"),
                eos_token_id=int(props.get("gpt2reg.eos_token_id", "50256")),
                model_name=props.get("gpt2reg.model_name", ""),
                io=json.loads(props.get("gpt2reg.io", "{}")),
                kv_in_place=props.get("gpt2reg.kv_in_place") == "true",
                kv_extend_rows=int(props["gpt2reg.kv_extend_rows"]) if "gpt2reg.kv_extend_rows" in props else None,
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source} has damaged gpt2reg metadata: {exc}") from None
