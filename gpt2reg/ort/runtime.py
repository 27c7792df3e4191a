"""Run an exported gpt2reg ONNX file from any application: numpy, onnxruntime and tiktoken, never torch.

::

    from gpt2reg.ort.runtime import OnnxGPT

    model = OnnxGPT("exports/gpt2-rope.onnx")          # reads the config and IO layout from the file
    print(model.generate("Hello, my dog", max_new_tokens=20, seed=0)[0].text)

The file's metadata (``gpt2reg.ort.metadata``) says which graph it holds, its config and tokenizer,
so nothing else is needed. Sampling is ``gpt2reg.generation``'s numpy half (temperature, top-k,
top-p, greedy, per-sequence seeds, stop strings, streaming): the same seed picks the same tokens as
the torch path from the same logits. Files whose graph writes the KV cache in place (the quantized
ones, ``kv_in_place``) decode through ``InPlaceKV``, which binds the cache's buffers with IOBinding
so a step copies nothing; others get the presents back from each call. Imports here must stay
torch-free; a test runs this module in a process where importing torch fails.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..decoding import Engine, engine
from ..errors import InputError
from ..generation import GenerationOptions, Prompt, Sample, StreamCallback, decode
from .metadata import LOGITS_TO_KEEP, OnnxDescription, past_names, present_names
from .pages import collapse
from .providers import CPU, create_session

__all__ = ["InPlaceKV", "OnnxBackend", "OnnxGPT", "load", "onnx_engine"]


class OnnxGPT:
    """An exported model under onnxruntime: ``logits`` for a batch, ``generate`` for text.

    ``provider`` is ``auto`` (CUDA when it really loads), ``cuda`` (an error where it cannot) or
    ``cpu``; ``self.provider`` is the one that actually runs. ``huge_pages=False`` loads faster and
    decodes slower on the CPU (for a short run; ``use_huge_pages`` catches up later): see
    ``gpt2reg.ort.pages``. ``spinning=False`` lets onnxruntime's threads sleep between operators
    (``create_session``), as the server wants.
    """

    def __init__(self, path: str | os.PathLike, *, provider: str = "auto", threads: int | None = None,
                 huge_pages: bool = True, spinning: bool = True) -> None:
        if not os.path.isfile(path):
            missing = not os.path.exists(path)
            raise InputError(f"{path}: no such ONNX file" if missing else f"{path} is not a file (an exported .onnx file is)")
        info = create_session(str(path), provider, threads=threads, huge_pages=huge_pages, spinning=spinning)
        self._memory = [] if huge_pages else info.memory
        self.path = str(path)
        self.session = info.session
        self.provider = info.provider
        self.provider_note = info.note
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.description = OnnxDescription.from_props(props, self.path)
            self.description.check_io(self.session, self.path)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if self.description.tokenizer != "gpt2":
            raise InputError(f"{path}: tokenizer '{self.description.tokenizer}' is not supported (only gpt2)")
        self.config: dict[str, Any] = self.description.config
        self._float = np.float16 if self.description.dtype == "fp16" else np.float32
        # The graph of ``export --format hf`` folders has no logits_to_keep (Optimum refuses inputs it
        # does not know) and returns every position; run() slices those itself.
        self.keeps_logits = LOGITS_TO_KEEP in {i.name for i in self.session.get_inputs()}

    def use_huge_pages(self) -> int:
        """Move the session's memory into 2 MiB pages now, if it was loaded with ``huge_pages=False``; bytes moved."""
        moved, self._memory = collapse(self._memory), []
        return moved

    @property
    def kv_cache(self) -> bool:
        return self.description.kv_cache

    @property
    def in_place(self) -> bool:
        """Whether decoding extends the KV cache in place (``InPlaceKV``): files whose graph does it
        (``kv_in_place``, the quantized ones), on the CPU, where the cache is host memory."""
        return self.description.kv_in_place and self.provider == CPU

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def block_size(self) -> int:
        return self.description.block_size

    def _check_length(self, length: int) -> None:
        if length > self.block_size:
            raise InputError(f"sequence of {length} tokens exceeds the context of {self.block_size} (block_size)")

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
            past: list[np.ndarray] | None = None, *, logits_to_keep: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
        """One graph call: logits (batch, kept, vocab) as float32 and, for the KV-cache graph, the presents.

        ``attention_mask`` (batch, past+seq) marks left pads with 0; position ids follow from it.
        ``past`` is the previous call's presents (one array per layer and key/value, of exact length),
        or None; the presents are new arrays (past + new), whatever the file (``InPlaceKV`` extends a
        cache in place instead).
        ``logits_to_keep`` k > 0 returns the logits of the last k positions only (generation needs
        the last one: the head, a 50257-wide projection, then runs once instead of seq times);
        0 returns every position (perplexity needs them all).
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        past_len = past[0].shape[2] if past else 0
        feed = self._feed(input_ids, attention_mask if self.kv_cache else None, past_len, logits_to_keep)
        if not self.kv_cache:
            if past or (attention_mask is not None and not np.all(attention_mask)):
                raise InputError("this file holds the full-sequence graph: no KV cache, no padding")
            return self._kept(self.session.run(["logits"], feed)[0], logits_to_keep), []
        feed.update(zip(past_names(self.description.n_layer), past or self._empty_past(batch), strict=True))
        logits, *presents = self.session.run(None, feed)
        return self._kept(logits, logits_to_keep), presents

    def decode_step(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                    past: list[np.ndarray] | InPlaceKV | None) -> tuple[np.ndarray, list[np.ndarray] | InPlaceKV]:
        """A generation call on the KV-cache graph: the last position's logits (batch, vocab) and the
        cache extended by ``input_ids``. Where the file writes the cache in place (``in_place``) that
        cache is an ``InPlaceKV`` (made from ``past``, arrays or None, on first use), else the presents
        ``run`` returns."""
        if self.in_place:
            if not isinstance(past, InPlaceKV):
                past = InPlaceKV(self, past if past is not None else self._empty_past(len(input_ids)))
            return past.run(input_ids, attention_mask, logits_to_keep=1)[:, -1], past
        logits, presents = self.run(input_ids, attention_mask, past, logits_to_keep=1)
        return logits[:, -1], presents

    def _empty_past(self, batch: int) -> list[np.ndarray]:
        """A cache of no tokens: one (batch, heads, 0, head_dim) array per layer and key/value."""
        heads, head_dim = self.config["n_head"], self.config["n_embd"] // self.config["n_head"]
        return [np.zeros((batch, heads, 0, head_dim), dtype=self._float)] * (2 * self.description.n_layer)

    def _feed(self, input_ids: np.ndarray, attention_mask: np.ndarray | None, past_len: int,
              logits_to_keep: int) -> dict[str, np.ndarray]:
        """Every input but the past: ids, ``logits_to_keep``, and for the KV-cache graph the mask over
        past + seq (all ones when None) and the position ids that follow from it."""
        batch, seq = input_ids.shape
        self._check_length(past_len + seq)
        rows = self.description.kv_extend_rows
        if rows is not None and past_len and seq > 1 and batch > rows:
            raise InputError(f"this file's GroupQueryAttention extends a past by several tokens in at most {rows} row(s) "
                             f"per call, not {batch} ({seq} tokens after {past_len}): send the rows one by one")
        if logits_to_keep < 0:
            raise InputError(f"logits_to_keep={logits_to_keep}: use 0 (every position) or a count of last positions")
        feed: dict[str, np.ndarray] = {"input_ids": input_ids}
        if self.keeps_logits:
            feed[LOGITS_TO_KEEP] = np.array(logits_to_keep, dtype=np.int64)
        if self.kv_cache:
            mask = (np.ones((batch, past_len + seq), dtype=np.int64) if attention_mask is None
                    else np.asarray(attention_mask, dtype=np.int64))
            feed["attention_mask"] = mask
            feed["position_ids"] = np.clip(mask.cumsum(-1) - 1, 0, None)[:, past_len:]
        return feed

    def _kept(self, logits: np.ndarray, logits_to_keep: int) -> np.ndarray:
        """float32 logits of the last ``logits_to_keep`` positions (a graph without the input returns all)."""
        if logits_to_keep and not self.keeps_logits:
            logits = logits[:, -logits_to_keep:]
        return logits.astype(np.float32, copy=False)

    def logits(self, input_ids: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """Logits (batch, seq, vocab), float32, for a batch of equal-length token sequences."""
        return self.run(np.asarray(input_ids, dtype=np.int64))[0]

    def generate(self, prompt: Prompt | Sequence[Prompt], options: GenerationOptions | None = None, *,
                 stream: StreamCallback | None = None, **fields: Any) -> list[Sample]:
        """Continue ``prompt`` exactly as ``gpt2reg.generation.generate`` does with a torch model.

        Same arguments (``options`` or its fields as keywords), same results (``Sample`` per sequence,
        prompt by prompt); prompts of different lengths are left-padded together through the KV-cache graph.
        """
        return decode(onnx_engine(self), prompt, options, stream=stream, **fields)


class InPlaceKV:
    """A KV cache in buffers with room to grow, which the graph extends in place: every layer's past
    and present are bound (onnxruntime's IOBinding) to one buffer, (rows, heads, capacity, head_dim),
    so a step writes its new key/value there and copies nothing, where ``OnnxGPT.run`` copies the
    whole cache into new presents. Only for files whose ``kv_in_place`` says so (``OnnxGPT.in_place``).

    ``arrays`` are the cached keys/values so far (views). A new cache, and one that a call outgrows,
    gets room for twice its length (``room``), so copies stay proportional to the final length, and
    never more than the model's context (as ``gpt2reg.model.GrowingKV`` does for torch). The buffers
    have room for rows too (``row_room``): rows that join (``append``) are written after the others,
    and rows that leave (``keep``) are filled in by the rows after them, so a batch whose requests come
    and go copies only the rows that move, never the whole cache into new memory (a 16-row 124M cache
    of 108 positions took 67 ms so on the 2-core AMD EPYC, four decode steps). Room that is never
    written costs no memory: the buffers are anonymous mappings, paged in when first touched.
    """

    def __init__(self, model: OnnxGPT, past: list[np.ndarray]) -> None:
        self.model = model
        self.binding = model.session.io_binding()
        self.length = past[0].shape[2]
        self.rows = past[0].shape[0]
        self.buffers: list[np.ndarray] = []
        self._fill(past, self.row_room(self.rows), self.room(self.length))

    @classmethod
    def assembled(cls, model: OnnxGPT, pieces: list[tuple[list[np.ndarray], np.ndarray, int]], width: int) -> InPlaceKV:
        """A new cache of ``width`` positions, with room to grow, from ``pieces``: (arrays, rows, start)
        gives rows ``rows`` of ``arrays``, positions from ``start`` on, right-aligned (left pads stay 0).

        Rows joining, leaving or being copied cost one copy of what is kept, straight into buffers the
        graph then extends in place (numpy's pad, concatenate and fancy indexing, then a copy into
        buffers with room, made four).
        """
        cache = cls.__new__(cls)
        cache.model, cache.binding, cache.length = model, model.session.io_binding(), width
        cache.rows = sum(len(rows) for _, rows, _ in pieces)
        first = pieces[0][0]
        shape = (cache.row_room(cache.rows), first[0].shape[1], cache.room(width), first[0].shape[3])
        cache.buffers = [host_buffers.take(shape, first[0].dtype) for _ in first]
        out = 0
        for arrays, rows, start in pieces:
            for row in rows.tolist():  # row by row: a view each, never a fancy-indexed copy of the whole cache
                cache._write(out, [a[row : row + 1, :, start:] for a in arrays])
                out += 1
        cache._bind()
        return cache

    def room(self, length: int) -> int:
        """The capacity for ``length`` positions: twice that (at least 16), within the context."""
        return max(length, min(max(2 * length, 16), self.model.block_size))

    @staticmethod
    def row_room(rows: int) -> int:
        """The capacity for ``rows`` rows: twice that, at least 4 (room never written is never paged in)."""
        return max(2 * rows, 4)

    @property
    def arrays(self) -> list[np.ndarray]:
        return [b[: self.rows, :, : self.length] for b in self.buffers]

    @property
    def capacity(self) -> int:
        return self.buffers[0].shape[2]

    def append(self, arrays: list[np.ndarray]) -> bool:
        """Write the rows of ``arrays`` after this cache's, right-aligned (left pads 0), if they fit in its
        room without widening it; whether they did (else nothing changed)."""
        rows, length = arrays[0].shape[0], arrays[0].shape[2]
        if length > self.length or self.rows + rows > self.buffers[0].shape[0]:
            return False
        self._write(self.rows, arrays)
        self.rows += rows
        self._bind()
        return True

    def keep(self, rows: np.ndarray, start: int) -> None:
        """Keep only ``rows`` (ascending), positions from ``start`` on: each row moves down into the place
        of the ones before it that left, and left by ``start`` (in place; an unmoved row with ``start``
        0 is not copied)."""
        length = self.length - start
        for buffer in self.buffers:
            for out, row in enumerate(rows.tolist()):
                if row != out or start:
                    buffer[out, :, :length] = buffer[row, :, start : self.length]  # numpy copies overlaps safely
        self.rows, self.length = len(rows), length
        self._bind()

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, *,
            logits_to_keep: int = 0) -> np.ndarray:
        """``OnnxGPT.run`` with this cache as the past, extended in place; returns the logits."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        feed = self.model._feed(input_ids, attention_mask, self.length, logits_to_keep)
        end = self.length + seq
        if end > self.capacity:
            self._grow(self.room(end))
        values = {name: self._value(np.ascontiguousarray(array)) for name, array in feed.items()}
        for name, value in values.items():
            self.binding.bind_ortvalue_input(name, value)
        kept = seq if logits_to_keep == 0 or not self.model.keeps_logits else min(logits_to_keep, seq)
        logits = np.empty((batch, kept, self.model.vocab_size), dtype=self.model._float)
        self.binding.bind_ortvalue_output("logits", self._value(logits))
        self.model.session.run_with_iobinding(self.binding)
        self.length = end
        return self.model._kept(logits, logits_to_keep)

    def _write(self, out: int, arrays: list[np.ndarray]) -> None:
        """Rows ``out``, ``out + 1``, ... of every buffer: ``arrays`` right-aligned to ``length``, zeros before
        (a reused buffer holds another cache's values, and pads must be finite: they are masked, not skipped)."""
        rows, pad = arrays[0].shape[0], self.length - arrays[0].shape[2]
        for buffer, array in zip(self.buffers, arrays, strict=True):
            buffer[out : out + rows, :, :pad] = 0
            buffer[out : out + rows, :, pad : self.length] = array

    def _fill(self, past: list[np.ndarray], row_capacity: int, capacity: int) -> None:
        """New buffers of ``row_capacity`` rows and ``capacity`` positions holding ``past``, bound as both
        past and present."""
        for array in past:
            buffer = host_buffers.take((row_capacity, array.shape[1], capacity, array.shape[3]), array.dtype)
            buffer[: array.shape[0], :, : array.shape[2]] = array
            self.buffers.append(buffer)
        self._bind()

    def _grow(self, capacity: int) -> None:
        """Move the cache into buffers of ``capacity``; the old ones go back to ``host_buffers`` (after the
        views ``_fill`` copied from are gone: a buffer with a live view is not taken back)."""
        old, self.buffers = self.buffers, []
        self._fill([b[: self.rows, :, : self.length] for b in old], old[0].shape[0], capacity)
        host_buffers.give(old)

    def __del__(self) -> None:
        try:
            self.binding.clear_binding_inputs()  # the bound values hold the buffers too
            self.binding.clear_binding_outputs()
            host_buffers.give(self.buffers)
        except Exception:  # noqa: BLE001 - a finalizer must not raise; the memory is freed as usual then
            pass

    def _bind(self) -> None:
        n_layer = self.model.description.n_layer
        for buffer, past_name, present_name in zip(self.buffers, past_names(n_layer), present_names(n_layer),
                                                    strict=True):
            value = self._value(buffer[: self.rows])
            self.binding.bind_ortvalue_input(past_name, value)
            self.binding.bind_ortvalue_output(present_name, value)

    @staticmethod
    def _value(array: np.ndarray):
        from onnxruntime import OrtValue

        return OrtValue.ortvalue_from_numpy(array)  # shares the array's memory (the CPU's)


Cache = list[np.ndarray] | InPlaceKV  # what a call's cache is: arrays, or buffers extended in place


class OnnxBackend:
    """The decoding ``Backend`` of an exported file under onnxruntime: the cache is numpy arrays.

    Where the file extends the cache in place (``OnnxGPT.in_place``) a call's cache is an ``InPlaceKV``,
    so decode steps copy nothing; the reshapes (rows joining and leaving) read its arrays and return
    new ones, which the next call moves into a buffer with room again.
    """

    def __init__(self, model: OnnxGPT) -> None:
        self.model = model
        self.kv_cache = model.kv_cache
        self.vocab_size = model.vocab_size
        self.block_size = model.block_size
        c = model.config  # past and present of every layer, in the graph's float type
        self.cache_bytes_per_token = 2 * c["n_layer"] * c["n_embd"] * np.dtype(model._float).itemsize

    def logits(self, ids: list[int], keep: int = 0) -> np.ndarray:
        return self.model.run(np.array([ids], dtype=np.int64), logits_to_keep=keep)[0][0]

    def run(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | InPlaceKV | None
            ) -> tuple[np.ndarray, list[np.ndarray] | InPlaceKV]:
        return self.model.decode_step(ids, mask, past)

    def join(self, first: Cache, second: Cache, width: int) -> Cache:
        a, b = _arrays(first), _arrays(second)
        if isinstance(first, InPlaceKV) and first.append(b):
            return first  # the joining rows written after the others, in the room left for them
        if self.model.in_place:
            return InPlaceKV.assembled(self.model, [(a, np.arange(len(a[0])), 0), (b, np.arange(len(b[0])), 0)], width)
        def pad(p: np.ndarray) -> np.ndarray:
            return p if p.shape[2] == width else np.pad(p, ((0, 0), (0, 0), (width - p.shape[2], 0), (0, 0)))

        return [np.concatenate((pad(x), pad(y))) for x, y in zip(a, b, strict=True)]

    def take(self, past: Cache, rows: np.ndarray, start: int) -> tuple[Cache, int]:
        if isinstance(past, InPlaceKV):
            # Moving every row left costs a copy of the whole cache; columns that no row uses any more
            # cost attention only (they are masked), so they go once they are a quarter of the width.
            start = start if 4 * start >= past.length else 0
            past.keep(rows, start)
            return past, start
        return [np.ascontiguousarray(p[rows, :, start:]) for p in past], start

    def repeat(self, past: Cache, copies: np.ndarray) -> Cache:
        arrays = _arrays(past)
        if self.model.in_place:
            rows = np.repeat(np.arange(len(copies)), copies)
            return InPlaceKV.assembled(self.model, [(arrays, rows, 0)], arrays[0].shape[2])
        return [np.repeat(p, copies, axis=0) for p in arrays]


class HostBuffers:
    """Memory for in-place KV caches, reused: a cache that grows, or is rebuilt when rows join or leave,
    hands its old buffers back (``give``), and the next cache of a similar size takes one (``take``).

    Fresh memory is the expensive part on a VM: every first touch of a page faults (and a VM that
    reports free pages to its host refaults each 4 KiB page it reuses). Rebuilding a 16-row 124M cache
    at every step (a row leaving and one joining) spent 2/3 of its CPU time in the kernel. A buffer is
    kept only when nothing else still holds a view of it, and the spare ones are at most ``limit``
    bytes; those too small for what is asked go first.

    New buffers are plain anonymous mappings, not ``np.zeros``: numpy advises its large arrays
    ``MADV_HUGEPAGE``, and with the kernel's usual ``defrag=madvise`` a first touch of such memory may
    stall compacting memory for a 2 MiB page (copying a 16-row 124M cache of 384 tokens into a new
    buffer took 0.1-2.0 s so on the 2-core AMD EPYC VM, 0.2 s steadily from a plain mapping, where the
    kernel still uses the huge pages it has at hand).
    """

    def __init__(self, limit: int = 1 << 30) -> None:
        self.limit = limit
        self._spare: list[np.ndarray] = []  # 1-D uint8 arrays over whole mappings, oldest first
        self._lock = threading.RLock()  # give() runs from __del__, which the GC may call inside take()

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An array of ``shape`` whose contents are undefined (a spare buffer's, or zeros)."""
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with self._lock:
            fits = [i for i, b in enumerate(self._spare) if size <= b.nbytes <= 2 * size]
            if fits:
                root = self._spare.pop(min(fits, key=lambda i: self._spare[i].nbytes))
                return root[:size].view(dtype).reshape(shape)
            self._spare = [b for b in self._spare if b.nbytes >= size // 2]  # too small to be asked for soon
        if not hasattr(mmap, "MAP_ANONYMOUS") or size == 0:
            return np.zeros(shape, dtype=dtype)
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return np.frombuffer(memory, dtype=np.uint8)[:size].view(dtype).reshape(shape)

    def give(self, buffers: list[np.ndarray]) -> None:
        """Take back ``buffers`` (the list is emptied): each is kept if nothing else holds a view of it."""
        roots = [b.base for b in buffers]
        buffers.clear()
        with self._lock:
            for root in roots:
                # References now: ``roots``, ``root``, getrefcount's argument; a view elsewhere adds one.
                if isinstance(root, np.ndarray) and root.base is not None and sys.getrefcount(root) <= 3:
                    self._spare.append(root)
            while sum(b.nbytes for b in self._spare) > self.limit:
                self._spare.pop(0)


host_buffers = HostBuffers()  # one per process: the decode threads of a server share it


def _arrays(past: Cache) -> list[np.ndarray]:
    return past.arrays if isinstance(past, InPlaceKV) else past


def onnx_engine(model: OnnxGPT) -> Engine:
    """The decoding engine of an exported file: rows over the KV-cache graph, or recomputed (the full-sequence graph)."""
    return engine(OnnxBackend(model))


def load(path: str | os.PathLike, *, provider: str = "auto", threads: int | None = None,
         huge_pages: bool = True) -> OnnxGPT:
    """Open an exported file (``OnnxGPT(path, ...)``)."""
    return OnnxGPT(path, provider=provider, threads=threads, huge_pages=huge_pages)
