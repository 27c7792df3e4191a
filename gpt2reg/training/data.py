"""Training text: files -> GPT-2 tokens, cached once as a memory-mapped uint16 file; random windows.

A corpus is a text file or a folder of them (every non-hidden file below it, in sorted order). Each
file is a document, and a file may hold several separated by the literal text ``<|endoftext|>``; in
the token stream every document is followed by the end-of-text token (50256), as in GPT-2's training
data. The validation part is the last ``val_fraction`` of the stream.

Batches are a pure function of (seed, step, micro-step, rank): the data position after a resume is
the step counter itself, so nothing about the sampler needs saving.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import write_bytes, write_json
from ..tokenizer import EOT_ID, EOT_TOKEN, encode_batch

TOKENS_FILE = "tokens.bin"
TOKENS_META = "tokens.json"
_FORMAT = "gpt2reg-tokens"


def text_files(path: str | os.PathLike) -> list[Path]:
    """The files of a corpus: ``path`` itself, or every non-hidden file below the folder, sorted."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(f"{root}: not a text file or a folder of them (a device, pipe or socket); save the text "
                         "to a file first")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise InputError(f"{root}: the folder holds no files")
    return files


def read_documents(path: str | os.PathLike) -> list[str]:
    """The non-blank documents of a corpus; a file that is not UTF-8 text is an error naming it."""
    documents: list[str] = []
    for file in text_files(path):
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{file}: not UTF-8 text (invalid byte at offset {exc.start}); convert or remove it") from None
        if "\x00" in text:
            raise InputError(f"{file}: binary data (NUL bytes), not text; remove it from the corpus")
        documents.extend(doc for doc in text.split(EOT_TOKEN) if doc.strip())
    if not documents:
        raise InputError(f"{path}: the corpus is empty (no text to train or evaluate on)")
    return documents


def tokenize_documents(documents: list[str]) -> np.ndarray:
    """One uint16 stream: each document's tokens followed by ``<|endoftext|>``."""
    parts: list[np.ndarray] = []
    for ids in encode_batch(documents):
        parts.append(np.asarray(ids, dtype=np.uint16))
        parts.append(np.asarray([EOT_ID], dtype=np.uint16))
    return np.concatenate(parts)


def _fingerprint(files: list[Path]) -> str:
    """Identifies a corpus by its files' paths, sizes and modification times (cheap: no reading)."""
    digest = hashlib.sha256(b"gpt2 tokenizer v1\n")
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def other_text(corpus: str | os.PathLike, caches: list[Path]) -> list[Path]:
    """The folders among ``caches`` whose token cache was made from another text than ``corpus`` is now.

    Files with the fingerprint the cache recorded are the same; otherwise the corpus is tokenized once and
    compared token for token (a copied or touched file is still the same text). Folders without a cache are
    not listed."""
    key = _fingerprint(text_files(corpus))
    digest = None
    other = []
    for cache in caches:
        try:
            meta = json.loads((cache / TOKENS_META).read_text())
            held = (cache / TOKENS_FILE).read_bytes() if meta.get("fingerprint") != key else None
        except (OSError, ValueError):
            continue
        if held is None:
            continue
        if digest is None:
            digest = hashlib.sha256(tokenize_documents(read_documents(corpus)).tobytes()).hexdigest()
        if hashlib.sha256(held).hexdigest() != digest:
            other.append(cache)
    return other


def cache_tokens(corpus: str | os.PathLike, cache_dir: str | os.PathLike, *, same_corpus: bool = False,
                 check: Callable[[np.ndarray], Any] | None = None) -> Path:
    """Tokenize ``corpus`` into ``cache_dir/tokens.bin`` unless an up-to-date cache is already there.

    ``same_corpus`` (a resumed run): a cache made from other files, or from these files before they
    changed, is an error rather than silently replaced - the run would go on on another text.
    ``check`` sees the tokens before anything is written, so a corpus it refuses (too small for one
    window, say) leaves no cache behind.
    """
    files = text_files(corpus)
    cache = Path(cache_dir)
    bin_path, meta_path = cache / TOKENS_FILE, cache / TOKENS_META
    key = _fingerprint(files)
    if meta_path.exists() and bin_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("fingerprint") == key and bin_path.stat().st_size == 2 * meta.get("tokens", -1):
            return bin_path
        if same_corpus and meta.get("fingerprint"):
            raise InputError(
                f"{corpus} is not the text this run was trained on (it started on {meta.get('source')} with "
                f"{meta.get('files')} file(s); files, sizes or modification times differ); resume with the same "
                f"text, or start a new run with -o NEW_FOLDER (--init {Path(cache_dir) / 'model'} continues from it)"
            )
    tokens = tokenize_documents(read_documents(corpus))
    if check is not None:
        check(tokens)
    write_bytes(bin_path, tokens.tobytes(), what="the token cache", option="--output")
    meta = {"format": _FORMAT, "dtype": "uint16", "tokens": int(tokens.size), "fingerprint": key,
            "source": str(Path(corpus).resolve()), "files": len(files)}
    write_json(meta_path, meta, what="the token cache", option="--output")
    return bin_path


def load_tokens(bin_path: str | os.PathLike) -> np.ndarray:
    """The cached stream, memory-mapped read-only (the corpus never has to fit in memory)."""
    return np.memmap(bin_path, dtype=np.uint16, mode="r")


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats/token) of ``tokens``' own frequencies: no unigram model can score them lower."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    p = counts[counts > 0] / tokens.size
    return float(-(p * np.log(p)).sum())


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int = 50257) -> float:
    """Cross-entropy (nats/token) on ``val`` of token frequencies counted on ``train``: the baseline a model
    must beat. Add-k smoothed, with k chosen on ``val`` itself, so the baseline gets its best case."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    val = np.asarray(val, dtype=np.int64)
    losses = [-np.log((counts[val] + k) / (counts.sum() + k * vocab_size)).mean() for k in (0.01, 0.03, 0.1, 0.3, 1.0)]
    return float(min(losses))


@dataclass
class TokenData:
    """A token stream split into train and validation parts, served as (input, target) windows."""

    tokens: np.ndarray
    seq_len: int
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        total = int(self.tokens.size)
        n_val = int(math.ceil(total * self.val_fraction)) if self.val_fraction > 0 else 0
        self.train = self.tokens[: total - n_val]
        self.val = self.tokens[total - n_val :]
        need = self.seq_len + 1
        if self.train.size < need + 1:
            raise InputError(
                f"the corpus has {total:,} tokens, {self.train.size:,} for training: too few for windows of "
                f"{self.seq_len} tokens; add text or lower --seq-len"
            )
        if n_val and self.val.size < need:
            raise InputError(
                f"the validation part has {self.val.size:,} tokens, fewer than one window of {self.seq_len}+1; "
                f"raise --val-fraction, lower --seq-len, or pass --val-fraction 0"
            )

    def batch(self, batch_size: int, step: int, micro: int = 0, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Random training windows for one micro-step: (inputs, targets), int64 (batch, seq_len)."""
        rng = np.random.default_rng([self.seed, step, micro, rank])
        starts = rng.integers(0, self.train.size - self.seq_len, size=batch_size)
        return self._windows(self.train, starts)

    def val_windows(self, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``limit`` non-overlapping validation windows, evenly spread and the same every time."""
        starts = np.arange(0, self.val.size - self.seq_len, self.seq_len)
        if starts.size > limit:
            starts = starts[np.linspace(0, starts.size - 1, limit).round().astype(np.int64)]
        return self._windows(self.val, starts)

    def _windows(self, part: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = starts[:, None] + np.arange(self.seq_len + 1)
        windows = np.asarray(part[index], dtype=np.int64)
        return windows[:, :-1], windows[:, 1:]
