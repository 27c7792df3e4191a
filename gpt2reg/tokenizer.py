"""GPT-2's byte-pair encoding through tiktoken, built offline from the bundled ranks file.

tiktoken's own ``get_encoding("gpt2")`` downloads its vocabulary at run time; this does not.
The ranks file's origin and licence are in ``gpt2reg/assets/README.md``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
# GPT-2's pre-tokenizer split pattern, as in tiktoken's openai_public.gpt2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (50,257 tokens; ``<|endoftext|>`` is 50256), no network needed."""
    ranks_file = resources.files("gpt2reg") / "assets" / "gpt2.tiktoken"
    with resources.as_file(ranks_file) as path:
        ranks = load_tiktoken_bpe(str(path))
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=50257,
    )


def hf_tokenizer_files() -> dict[str, str]:
    """This tokenizer as Hugging Face's byte-level BPE files: ``{"vocab.json": ..., "merges.txt": ...}``.

    Tools that read a Hugging Face checkpoint's tokenizer (llama.cpp's ``convert_hf_to_gguf.py``) need
    these; they are rebuilt from the bundled ranks, so no download. Each merge is recovered by running
    BPE on a token with only the ranks below its own until two parts remain.
    """
    encoding = get_tokenizer()
    ranks: dict[bytes, int] = encoding._mergeable_ranks  # tiktoken keeps no public accessor for the ranks
    byte_char = _byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    def merge_of(token: bytes, rank: int) -> tuple[bytes, bytes]:
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
            best, i = min(pairs)
            if best >= rank:
                raise ValueError(f"token {token!r} cannot be built from lower-ranked merges")
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts[0], parts[1]

    merges = [" ".join(map(text, merge_of(token, rank)))
              for token, rank in sorted(ranks.items(), key=lambda item: item[1]) if len(token) > 1]
    vocab = {text(token): rank for token, rank in ranks.items()} | {EOT_TOKEN: EOT_ID}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n"}


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte, as in its vocab.json and merges.txt."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}
