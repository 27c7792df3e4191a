"""GPT-2's byte-pair encoding through tiktoken, built offline from the bundled ranks file.

tiktoken's own ``get_encoding("gpt2")`` downloads its vocabulary at run time; this does not.
The ranks file's origin and licence are in ``gpt2reg/assets/README.md``.

Text is encoded through ``encode`` / ``encode_batch``, never the tiktoken object directly: they hand the
tokenizer pieces of at most ``PIECE_CHARS`` characters. tiktoken's pre-tokenizer (fancy-regex) overflows
its stack on a long run of whitespace (~1M spaces: a Rust panic, not an exception), so no piece may hold
one. Pieces are cut where the split pattern always starts a new match - before a space that follows a
non-space character - so on any text with such a place every ``PIECE_CHARS`` characters the tokens are
exactly those of one unsplit encoding. Only a run with no such place (e.g. 32K spaces) is cut hard, and
is then tokenized as consecutive runs of at most ``PIECE_CHARS``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
# GPT-2's pre-tokenizer split pattern, as in tiktoken's openai_public.gpt2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The longest text handed to tiktoken at once: whitespace runs 10x longer still tokenize (tested to 400K).
PIECE_CHARS = 32_768
# Unicode White_Space (what the pattern's \s is), then a character Python does not count as whitespace
# either (str.isspace adds U+001C..U+001F): in reversed text, a place before which a new match begins.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SAFE_CUT_REVERSED = re.compile(f"[{_WHITE_SPACE}][^\\s]")


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


def encode(text: str, *, special: bool = False, piece_chars: int = PIECE_CHARS) -> list[int]:
    """``text``'s tokens, encoded in bounded pieces (see the module docstring), several at once. With
    ``special``, the text ``<|endoftext|>`` is the end-of-text token; otherwise it is ordinary text."""
    tokenizer = get_tokenizer()
    parts = list(pieces(text, piece_chars))
    if len(parts) == 1:  # most text: no thread pool for one piece
        return tokenizer.encode(text, allowed_special={EOT_TOKEN}, disallowed_special=()) if special \
            else tokenizer.encode_ordinary(text)
    if special:
        encoded = tokenizer.encode_batch(parts, allowed_special={EOT_TOKEN}, disallowed_special=())
    else:
        encoded = tokenizer.encode_ordinary_batch(parts)
    return [t for ids in encoded for t in ids]


def encode_batch(texts: Sequence[str], *, piece_chars: int = PIECE_CHARS) -> list[list[int]]:
    """Each text's ordinary tokens (``<|endoftext|>`` is text), the pieces of all of them encoded in parallel."""
    spans, flat = [], []
    for text in texts:
        start = len(flat)
        flat.extend(pieces(text, piece_chars))
        spans.append((start, len(flat)))
    encoded = get_tokenizer().encode_ordinary_batch(flat)
    return [[t for ids in encoded[a:b] for t in ids] for a, b in spans]


def pieces(text: str, piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``piece_chars`` characters, each cut before a whitespace
    character that follows a non-whitespace one (where GPT-2's split pattern always begins a new match),
    or, where a window holds no such place, hard (never inside ``<|endoftext|>``)."""
    start, n = 0, len(text)
    while n - start > piece_chars:
        end = start + piece_chars
        # Searched backwards: text[end], text[end - 1], ... text[start]; a match is text[i] then text[i - 1].
        found = _SAFE_CUT_REVERSED.search(text[end : start - 1 if start else None : -1])
        cut = end - found.start() if found else end
        if not found:
            eot = text.find(EOT_TOKEN, max(start, end - len(EOT_TOKEN) + 1), end + len(EOT_TOKEN) - 1)
            if eot != -1 and eot < end:
                cut = eot if eot > start else eot + len(EOT_TOKEN)
        yield text[start:cut]
        start = cut
    yield text[start:]


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
