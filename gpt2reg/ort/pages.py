"""An onnxruntime session's memory in 2 MiB pages: its weights are streamed once per decode step.

The torch path places its weights in huge pages itself (``gpt2reg.accel.hugepages``); onnxruntime allocates
its weights (and the pre-packed copies its MatMuls read) with its own allocator, in ordinary 4 KiB
pages unless the OS puts every allocation in huge pages (transparent huge pages ``always``; the
common default is ``madvise``). So the anonymous memory that appeared while a CPU session was being
created (``new_regions``) is advised ``MADV_HUGEPAGE`` (``advise``: free; the kernel's background
collapsing, khugepaged, may then move it, slowly) or also collapsed into huge pages at once
(``collapse``: ``MADV_COLLAPSE``, Linux 6.1+). Contents do not change, only the pages behind them. On
the 2-core AMD EPYC this cut the CPU time of a GPT-2 small fp32 decode step by ~20% (README, ONNX
section).

The collapse copies every page into a fresh 2 MiB page: ~3.5 GB/s where the fresh pages are at hand,
but ~0.4 GB/s (1.6-1.9 s for the fp32 session's 750 MB) in a VM that hands free memory back to its
host (virtio-balloon free page reporting: the host refaults each 4 KiB when the page is reused), so
a one-shot run can skip it (``huge_pages=False`` on the session; README, ONNX section).

Linux with transparent huge pages not ``never`` only; ``GPT2REG_HUGE_PAGES=off`` turns it off. Never
raises: a failure leaves the memory as it was, logged. Torch-free.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable

from ..accel.machine import HUGE_PAGE, MIN_BYTES, huge_pages_available

log = logging.getLogger(__name__)

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25

Region = tuple[int, int]  # [start, end) of a mapping


def anonymous_regions() -> set[Region]:
    """The process's private, writable, anonymous mappings (the heap included), from /proc/self/maps."""
    if not huge_pages_available():
        return set()
    regions = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                anonymous = len(fields) == 5 or (len(fields) == 6 and fields[5] == "[heap]")
                if anonymous and fields[1].startswith("rw") and fields[1].endswith("p"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    regions.add((start, end))
    except OSError:
        return set()
    return regions


def new_regions(before: set[Region]) -> list[Region]:
    """The whole 2 MiB pages of the anonymous mappings not in ``before``, where there are enough of them."""
    try:
        spans = []
        for start, end in sorted(anonymous_regions() - before):
            first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
            if last - first >= MIN_BYTES:
                spans.append((first, last))
        return spans
    except Exception as exc:  # an optimisation: never let it stop inference
        _failed(exc)
        return []


def advise(regions: Iterable[Region]) -> int:
    """Mark ``regions`` ``MADV_HUGEPAGE`` (no copy now); the bytes marked."""
    return _madvise(regions, (MADV_HUGEPAGE,))


def collapse(regions: Iterable[Region]) -> int:
    """Put ``regions`` into huge pages now (``MADV_HUGEPAGE`` + ``MADV_COLLAPSE``); the bytes collapsed."""
    return _madvise(regions, (MADV_HUGEPAGE, MADV_COLLAPSE))


def _madvise(regions: Iterable[Region], advice: tuple[int, ...]) -> int:
    if not huge_pages_available():
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        done = 0
        for start, end in regions:
            if all(libc.madvise(start, end - start, a) == 0 for a in advice):
                done += end - start
        return done
    except Exception as exc:
        _failed(exc)
        return 0


def _failed(exc: Exception) -> None:
    log.warning("onnxruntime's memory not moved to huge pages: %s: %s", type(exc).__name__, exc)


__all__ = ["advise", "anonymous_regions", "collapse", "new_regions"]
