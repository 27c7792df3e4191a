"""An onnxruntime session's memory in 2 MiB pages: its weights are streamed once per decode step.

The torch path places its weights in huge pages itself (``gpt2reg.hugepages``); onnxruntime allocates
its weights (and the pre-packed copies its MatMuls read) with its own allocator, in ordinary 4 KiB
pages unless the OS puts every allocation in huge pages (transparent huge pages ``always``; the
common default is ``madvise``). So after a CPU session is created, the anonymous memory that
appeared while it was being created is advised ``MADV_HUGEPAGE`` and collapsed into huge pages at
once (``MADV_COLLAPSE``, Linux 6.1+; older kernels only advise, and the kernel's background
collapsing may get there later). Contents do not change, only the pages behind them. On the 2-core
AMD EPYC this cut the CPU time of a GPT-2 small fp32 decode step by ~20% (README, ONNX section).

Linux with transparent huge pages not ``never`` only; ``GPT2REG_HUGE_PAGES=off`` turns it off. Never
raises: a failure leaves the memory as it was, logged. Torch-free.
"""

from __future__ import annotations

import ctypes
import logging

from ..machine import HUGE_PAGE, MIN_BYTES, huge_pages_available

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


def collapse_new(before: set[Region]) -> int:
    """Put the anonymous mappings that are not in ``before`` into huge pages; the bytes collapsed."""
    if not huge_pages_available():
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        collapsed = 0
        for start, end in sorted(anonymous_regions() - before):
            first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
            if last - first < MIN_BYTES:
                continue
            if libc.madvise(first, last - first, MADV_HUGEPAGE) == 0 and libc.madvise(first, last - first, MADV_COLLAPSE) == 0:
                collapsed += last - first
        return collapsed
    except Exception as exc:  # an optimisation: never let it stop inference
        log.warning("onnxruntime's memory not moved to huge pages: %s: %s", type(exc).__name__, exc)
        return 0


__all__ = ["anonymous_regions", "collapse_new"]
