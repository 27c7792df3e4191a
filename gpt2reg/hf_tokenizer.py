"""The bundled GPT-2 tokenizer as Hugging Face files: ``tokenizer.json`` and ``tokenizer_config.json``.

Optimum, transformers, transformers.js and onnxruntime-genai read a model's tokenizer from these files.
They are built offline from the ranks file that gpt2reg's tiktoken encoding uses
(``gpt2reg.tokenizer.hf_tokenizer_files``: vocab and merges) with the ``tokenizers`` library, so they
encode every text as tiktoken does (a test compares them on unicode, whitespace and the special token).
"""

from __future__ import annotations

import json
from typing import Any

from .tokenizer import EOT_ID, EOT_TOKEN, hf_tokenizer_files


def tokenizer_json() -> str:
    """GPT-2's byte-level BPE as a ``tokenizers`` ``tokenizer.json`` (no prefix space; ``<|endoftext|>`` special)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    files = hf_tokenizer_files()
    merges = [tuple(line.split(" ")) for line in files["merges.txt"].splitlines()[1:] if line]
    tokenizer = Tokenizer(models.BPE(vocab=json.loads(files["vocab.json"]), merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(EOT_TOKEN, special=True, normalized=False)])
    return tokenizer.to_str()


def tokenizer_config(model_max_length: int) -> dict[str, Any]:
    """``tokenizer_config.json``: GPT-2's, padding on the left (batched generation of a decoder)
    with ``<|endoftext|>`` and no clean-up of spaces on decode (the text tiktoken decodes)."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": EOT_TOKEN,
        "eos_token": EOT_TOKEN,
        "unk_token": EOT_TOKEN,
        "pad_token": EOT_TOKEN,
        "padding_side": "left",
        "add_prefix_space": False,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": {str(EOT_ID): {"content": EOT_TOKEN, "lstrip": False, "normalized": False,
                                               "rstrip": False, "single_word": False, "special": True}},
    }
