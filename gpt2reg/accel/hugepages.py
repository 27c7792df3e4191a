"""Model weights in 2 MiB pages: a batch-1 decode step streams every weight once, and read from 4 KiB
pages that stream pays a TLB miss every 4 KiB (in a virtual machine, a two-level page walk each).

``use_huge_pages`` moves a model's CPU parameters, in the order the model holds them (about the order a
decode step reads them), into 2 MiB-aligned anonymous memory advised ``MADV_HUGEPAGE``, in blocks of
at most ``BLOCK_BYTES`` so that the copy costs little extra memory. Values, dtypes, shapes and the
``Parameter`` objects stay the same (a tied head stays tied); only where the data lives changes, once.
On a 2-core AMD EPYC VM this made one GPT-2 small decode step ~5-9% faster on one thread (CPU time),
and a streaming read of a 512 MB buffer ~20-40% faster. Linux with transparent huge pages not set to
``never`` only; anywhere else, or on any failure, the weights stay where they are (logged, never raised).

``GPT2REG_HUGE_PAGES=off`` leaves the weights where they are.
"""

from __future__ import annotations

import logging
import mmap
import weakref

import torch
from torch import nn

from .machine import HUGE_PAGE, MIN_BYTES
from .machine import huge_pages_available as available

log = logging.getLogger(__name__)

BLOCK_BYTES = 64 * 2**20  # the most copied at once (a larger tensor is its own block)
ALIGN = 64  # each tensor starts on a cache line

_placed: dict[int, tuple[weakref.ref, int]] = {}  # id(parameter) -> (the parameter, where its data went)


def empty(nbytes: int) -> torch.Tensor:
    """Uninitialised uint8 memory of ``nbytes``, 2 MiB-aligned and advised ``MADV_HUGEPAGE``.

    The tensor keeps its mapping alive; pages are huge where the OS can find them when first written.
    """
    block, start = _mapping(nbytes)
    return torch.frombuffer(block, dtype=torch.uint8, count=nbytes, offset=start)


def _mapping(nbytes: int) -> tuple[mmap.mmap, int]:
    """Anonymous memory and the offset in it of ``nbytes`` advised ``MADV_HUGEPAGE``, 2 MiB-aligned."""
    room = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    block = mmap.mmap(-1, room + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -torch.frombuffer(block, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE
    block.madvise(mmap.MADV_HUGEPAGE, start, room)
    return block, start


def use_huge_pages(model: nn.Module) -> int:
    """Move ``model``'s contiguous CPU parameters into huge pages; the bytes moved (0: nothing to do).

    Idempotent: parameters already moved stay put. Never raises: on a failure the parameters not yet
    moved stay where they are, logged.
    """
    todo = [p for p in model.parameters() if p.device.type == "cpu" and p.numel() and p.is_contiguous() and not _moved(p)]
    total = sum(_padded(p) for p in todo)
    if not todo or total < MIN_BYTES or not available():
        return 0
    moved = 0
    try:
        with torch.no_grad():
            for block in _blocks(todo):
                # a storage per tensor, as loaded weights have: savers refuse tensors sharing one
                memory, offset = _mapping(sum(_padded(p) for p in block))
                for p in block:
                    size = p.numel() * p.element_size()
                    data = torch.frombuffer(memory, dtype=p.dtype, count=p.numel(), offset=offset).view(p.shape)
                    data.copy_(p)
                    p.data = data
                    _placed[id(p)] = (weakref.ref(p, lambda _, key=id(p): _placed.pop(key, None)), p.data_ptr())
                    offset += _padded(p)
                    moved += size
    except Exception as exc:  # an optimisation: never let it stop inference
        log.warning("weights not moved to huge pages (%d of %d bytes were): %s: %s",
                    moved, total, type(exc).__name__, exc)
    return moved


def _moved(p: torch.Tensor) -> bool:
    ref, data_ptr = _placed.get(id(p), (None, None))
    return ref is not None and ref() is p and data_ptr == p.data_ptr()


def _padded(p: torch.Tensor) -> int:
    return -(-p.numel() * p.element_size() // ALIGN) * ALIGN


def _blocks(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive parameters grouped into blocks of at most ``BLOCK_BYTES`` (or one larger tensor)."""
    blocks: list[list[torch.Tensor]] = [[]]
    size = 0
    for p in params:
        if blocks[-1] and size + _padded(p) > BLOCK_BYTES:
            blocks.append([])
            size = 0
        blocks[-1].append(p)
        size += _padded(p)
    return blocks


__all__ = ["available", "empty", "use_huge_pages"]
