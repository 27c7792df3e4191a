"""The offline GPT-2 tokenizer gives GPT-2's published encodings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2reg import get_tokenizer
from gpt2reg.tokenizer import hf_tokenizer_files


def test_known_encodings() -> None:
    tok = get_tokenizer()
    assert tok.encode("Hello, my dog is cute") == [15496, 11, 616, 3290, 318, 13779]
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert tok.eot_token == 50256 and tok.n_vocab == 50257


def test_round_trip_bytes() -> None:
    tok = get_tokenizer()
    text = "Tabs\tand  spaces, ünïcödé, emoji 🙂 and code: x = f(y)\n\n"
    assert tok.decode(tok.encode(text)) == text


def test_hugging_face_files_encode_as_we_do(tmp_path: Path) -> None:
    """vocab.json and merges.txt rebuilt from our ranks: transformers' GPT-2 tokenizer on them is ours."""
    transformers = pytest.importorskip("transformers")
    files = hf_tokenizer_files()
    assert files["merges.txt"].splitlines()[:3] == ["#version: 0.2", "Ġ t", "Ġ a"]  # GPT-2's first merges
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257}))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello, my dog is cute! Tabs\tand  spaces, ünïcödé, emoji 🙂, 12345 and code: x = f(y)\n\n<|endoftext|>"
    assert theirs.encode(text) == get_tokenizer().encode(text, allowed_special="all")
    assert len(theirs) == 50257
