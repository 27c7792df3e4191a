"""The offline GPT-2 tokenizer gives GPT-2's published encodings."""

from __future__ import annotations

from gpt2reg import get_tokenizer


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
