"""A model folder that other people's software runs as it is (``gpt2reg export MODEL --format hf``).

Hugging Face Optimum (``ORTModelForCausalLM``, the transformers ``pipeline``), transformers.js (Node
and the browser), onnxruntime-genai and plain onnxruntime programs each look for their own files;
this writes all of them, for any architecture the exporter supports (the graph does the math)::

    DIR/config.json               model_type "gpt2" (the cache's shape for the consumers); the real
                                  architecture, the validation and the files in its "gpt2reg" section
    DIR/generation_config.json    <|endoftext|> as bos, eos and pad
    DIR/tokenizer.json            converted offline from the bundled ranks (gpt2reg.hf_tokenizer)
    DIR/tokenizer_config.json
    DIR/onnx/model{suffix}.onnx   the KV-cache graph, named as transformers.js names its dtypes:
                                  fp32 "", fp16 "_fp16", int8 "_quantized" (q8), int4 "_q4"
    DIR/genai_config.json         onnxruntime-genai's decoder config with our IO names
    DIR/README.md                 the model card: how it was built, validated and is run

The graph is the single-file export's without the ``logits_to_keep`` input (Optimum feeds only the
inputs it knows and refuses a graph with another), so it returns every position's logits; its logits
dimension is ``sequence_length``, a name Optimum's IOBinding can evaluate. Everything is written
through ``gpt2reg.files.staged``: all files or none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoints import hf_config
from ..config import GPTConfig
from ..errors import CheckpointError, InputError
from ..files import check_folder, staged
from ..hf_tokenizer import tokenizer_config, tokenizer_json
from ..memory import model_bytes
from ..ort.metadata import DEFAULT_OPSET
from ..tokenizer import EOT_ID
from .export import export_onnx, is_export

FORMAT = "gpt2reg-hf"
_SHAPE_KEYS = ("model_type", "architectures", "vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head")
# variant -> (file under onnx/, transformers.js dtype that picks it)
FILES = {"fp32": ("model.onnx", "fp32"), "fp16": ("model_fp16.onnx", "fp16"),
         "int8": ("model_quantized.onnx", "q8"), "int4": ("model_q4.onnx", "q4")}
TOKENIZER_VOCAB = EOT_ID + 1


def is_folder_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder gpt2reg wrote (its config.json says so): it may be written again."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("gpt2reg", {}).get("format") == FORMAT


def export_folder(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    dtype: str = "fp32",
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    model_name: str = "",
    force: bool = False,
    verify: Callable[[Path], Any] | None = None,
) -> Path:
    """Write ``model`` as a folder for other software (module docstring) and return the ONNX file's path.

    ``verify(tmp_onnx)`` runs before anything is moved into place; it raises to stop the write, or
    returns a validation report whose numbers go into config.json and the model card.
    """
    vocab = model.config.vocab_size
    if vocab < TOKENIZER_VOCAB:
        raise InputError(f"vocab_size {vocab} is smaller than the GPT-2 tokenizer's {TOKENIZER_VOCAB} tokens, "
                         "which the folder's consumers encode text with; export it as a single file (--format onnx)")
    folder = check_folder(folder, what="the model folder", force=force, reusable=is_folder_export)
    variant = quantize or dtype
    name, js_dtype = FILES[variant]
    reports: list[Any] = []

    def check(tmp: Path) -> None:
        if verify is not None:
            reports.append(verify(tmp))

    created: list[Path] = []
    with staged(folder, what="the model folder", created=created) as stage:
        stage.temp.joinpath("onnx").mkdir()
        if not (folder / "onnx").is_dir():
            (folder / "onnx").mkdir()
            created.append(folder / "onnx")
        # One file unless protobuf's 2 GB limit says otherwise: transformers.js looks for model.onnx_data, not
        # the single-file export's mapped model.onnx.data.
        embedded = model_bytes(model.config, 2 if dtype == "fp16" else 4) < 2**31
        # The quantized token lookup stays fp32 here: onnxruntime-web's WASM build (the browser's
        # transformers.js) has no GatherBlockQuantized kernel, so the table is not shared with the head.
        export_onnx(model, stage.path(f"onnx/{name}"), dtype=dtype, quantize=quantize, opset=opset,
                    model_name=model_name, verify=check, logits_to_keep=False, external_data=not embedded,
                    shared_table=False)
        in_place = _kv_in_place(stage.temp / "onnx" / name)
        report = reports[0] if reports else None
        config = model.config.to_dict()
        card = _validation(report)
        files = {
            "config.json": _hf_config(model.config, variant, js_dtype, f"onnx/{name}", model_name, card),
            "generation_config.json": {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID},
            "tokenizer_config.json": tokenizer_config(config["block_size"]),
            "genai_config.json": _genai_config(config, f"onnx/{name}", in_place),
        }
        for file, data in files.items():
            stage.path(file).write_text(json.dumps(data, indent=2) + "\n")
        stage.path("tokenizer.json").write_text(tokenizer_json())
        stage.path("README.md").write_text(_model_card(config, variant, js_dtype, name, model_name, card, folder.name))
    for stale in (folder / "onnx").glob("model*.onnx"):  # an earlier export of another variant here
        if stale.name != name and is_export(stale):
            stale.unlink()
            Path(f"{stale}.data").unlink(missing_ok=True)
    return folder / "onnx" / name


def _kv_in_place(path: Path) -> bool:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return props.get("gpt2reg.kv_in_place") == "true"


def _validation(report: Any) -> dict[str, Any] | None:
    if report is None:
        return None
    return {"max_abs_diff": report.max_abs_diff, "mean_abs_diff": report.mean_abs_diff, "atol": report.atol,
            "top1_agreement": report.top1_agreement, "cases": len(report.cases), "provider": report.provider}


def _hf_config(config: GPTConfig, variant: str, js_dtype: str, onnx_file: str, model_name: str,
               validation: dict[str, Any] | None) -> dict[str, Any]:
    """transformers' GPT-2 config (``checkpoints.hf_config``) where it describes the model exactly, else
    only its keys for the shapes (the KV cache's, which the consumers allocate); the truth under "gpt2reg"."""
    from .. import __version__

    try:
        hf = hf_config(config)
    except CheckpointError:  # RoPE, ALiBi, another norm or activation: the shapes of a GPT-2, nothing more
        twin = hf_config(replace(config, pos="learned", act="gelu_tanh", norm="layernorm", bias=True))
        hf = {key: twin[key] for key in _SHAPE_KEYS}
    return {
        **hf,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "use_cache": True,
        "transformers.js_config": {"dtype": js_dtype},
        "gpt2reg": {
            "format": FORMAT,
            "version": __version__,
            "note": "model_type gpt2 gives other software the KV cache's shape; the ONNX graph computes this config",
            "config": config.to_dict(),
            "model_name": model_name,
            "onnx": onnx_file,
            "variant": variant,
            "validation": validation,
        },
    }


def _genai_config(config: dict[str, Any], onnx_file: str, in_place: bool) -> dict[str, Any]:
    """onnxruntime-genai's decoder with our IO names. Its ``gpt2`` type expects an older combined
    cache layout; ``llama`` is its generic decoder (nothing llama-specific is used: the graph
    computes positions and attention). It shares past and present buffers only where the graph
    extends the cache in place (``kv_in_place``); the fp32 and fp16 graphs fail with it."""
    return {
        "model": {
            "type": "llama",
            "bos_token_id": EOT_ID,
            "eos_token_id": EOT_ID,
            "pad_token_id": EOT_ID,
            "context_length": config["block_size"],
            "vocab_size": config["vocab_size"],
            "decoder": {
                "filename": onnx_file,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": config["n_embd"] // config["n_head"],
                "hidden_size": config["n_embd"],
                "num_attention_heads": config["n_head"],
                "num_key_value_heads": config["n_head"],
                "num_hidden_layers": config["n_layer"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "max_length": config["block_size"],
                   "past_present_share_buffer": in_place},
    }


def _model_card(config: dict[str, Any], variant: str, js_dtype: str, name: str, model_name: str,
                validation: dict[str, Any] | None, folder_name: str) -> str:
    from .. import __version__

    arch = (f"{config['n_layer']} layers, {config['n_head']} heads, {config['n_embd']} wide, context "
            f"{config['block_size']}, vocabulary {config['vocab_size']}; positions `{config['pos']}`, "
            f"activation `{config['act']}`, norm `{config['norm']}`")
    checked = ("**Not validated** (exported with --no-validate)." if validation is None else
               f"**Validated** against the PyTorch model: max |logit difference| {validation['max_abs_diff']:.3g} "
               f"(mean {validation['mean_abs_diff']:.3g}, tolerance {validation['atol']:g}), top-1 agreement "
               f"{validation['top1_agreement']:.1%}, over {validation['cases']} random cases (prefill, cached steps, "
               f"left padding) under onnxruntime's {validation['provider']}.")
    return f"""---
pipeline_tag: text-generation
library_name: transformers.js
tags: [onnx, gpt2reg]
---

# {folder_name}

A GPT-2 variant built with gpt2reg {__version__} from `{model_name or 'a model'}`:
{arch}. `onnx/{name}` is its decoder with a KV cache ({variant}), exported to ONNX; `config.json` says
`model_type: gpt2` so that other software sizes the cache, and keeps the real architecture in its
`gpt2reg` section.

{checked}

The graph returns every position's logits (no `logits_to_keep` input here: Optimum refuses inputs it
does not know). Tokenizer: GPT-2's byte-level BPE, `<|endoftext|>` = {EOT_ID}.

## Python: Optimum and transformers

```python
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer, pipeline

model = ORTModelForCausalLM.from_pretrained("{folder_name}")   # use_io_binding=True works too
tokenizer = AutoTokenizer.from_pretrained("{folder_name}")
ids = tokenizer(["Hello, my dog"], return_tensors="pt")
out = model.generate(input_ids=ids.input_ids, attention_mask=ids.attention_mask, max_new_tokens=20, do_sample=False)
print(tokenizer.decode(out[0]))
print(pipeline("text-generation", model=model, tokenizer=tokenizer)("Hello, my dog", max_new_tokens=20, do_sample=False))
```

## Python: onnxruntime-genai

```python
import onnxruntime_genai as og

model = og.Model("{folder_name}")
tokenizer = og.Tokenizer(model)
params = og.GeneratorParams(model)
params.set_search_options(max_length=64, do_sample=False)
generator = og.Generator(model, params)
generator.append_tokens(tokenizer.encode("Hello, my dog"))
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)))
```

## JavaScript: transformers.js (Node or the browser)

```js
import {{ env, pipeline }} from "@huggingface/transformers";

env.allowRemoteModels = false;
env.localModelPath = "./";                     // the folder that holds {folder_name}/
const generator = await pipeline("text-generation", "{folder_name}");   // dtype "{js_dtype}" from config.json
const [out] = await generator("Hello, my dog", {{ max_new_tokens: 20, do_sample: false }});
console.log(out.generated_text);
```

## C# and C++: onnxruntime-genai

```csharp
using Microsoft.ML.OnnxRuntimeGenAI;

using var model = new Model("{folder_name}");
using var tokenizer = new Tokenizer(model);
using var generatorParams = new GeneratorParams(model);
generatorParams.SetSearchOption("max_length", 64);
using var generator = new Generator(model, generatorParams);
generator.AppendTokenSequences(tokenizer.Encode("Hello, my dog"));
while (!generator.IsDone()) generator.GenerateNextToken();
Console.WriteLine(tokenizer.Decode(generator.GetSequence(0)));
```

C++ is the same calls (`OgaModel::Create`, `OgaTokenizer`, `OgaGenerator`) from `ort_genai.h`.

## Plain onnxruntime

Inputs `input_ids`, `attention_mask` (past + new), `position_ids`, `past_key_values.{{i}}.key/.value`
(batch, heads, past, head size); outputs `logits`, `present.{{i}}.key/.value`. Left padding: mask 0 on
pads, positions = cumulative sum of the mask - 1, clamped at 0. The file's `gpt2reg.*` metadata
describes it fully.
"""
