"""onnxruntime's session memory in huge pages (gpt2reg.onnx.pages): only where memory lives changes.

Whether the kernel really collapses (Linux 6.1+) is checked where it can; that the contents are
unchanged, that a session's outputs are unchanged and that the off switch works, everywhere.
"""

from __future__ import annotations

import mmap
import platform

import numpy as np
import pytest

from gpt2reg.machine import huge_pages_available
from gpt2reg.onnx import pages

needs_huge_pages = pytest.mark.skipif(not huge_pages_available(), reason="no transparent huge pages on this OS")


def _huge_kb(start: int, end: int) -> int:
    """AnonHugePages of the mappings inside [start, end), from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                a, b = (int(x, 16) for x in head.split("-"))
                inside = a < end and b > start
            elif inside and head == "AnonHugePages:":
                total += int(line.split()[1])
    return total


@needs_huge_pages
def test_new_anonymous_memory_is_collapsed_and_keeps_its_contents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPT2REG_HUGE_PAGES", raising=False)
    before = pages.anonymous_regions()
    size = 4 * pages.HUGE_PAGE + pages.MIN_BYTES
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    data = np.frombuffer(block, dtype=np.uint8)
    data[:] = np.arange(size, dtype=np.uint64).astype(np.uint8)  # every page written, a known pattern
    start = data.ctypes.data
    assert any(a <= start < b for a, b in pages.anonymous_regions() - before)
    collapsed = pages.collapse_new(before)
    assert np.array_equal(data, np.arange(size, dtype=np.uint64).astype(np.uint8))
    kernel = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    if kernel >= (6, 1):  # MADV_COLLAPSE
        assert collapsed >= pages.MIN_BYTES and _huge_kb(start, start + size) >= pages.MIN_BYTES // 1024
    del data
    block.close()


def test_off_switch_leaves_memory_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2REG_HUGE_PAGES", "off")
    assert pages.anonymous_regions() == set() and pages.collapse_new(set()) == 0


def test_a_failure_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("GPT2REG_HUGE_PAGES", raising=False)
    monkeypatch.setattr(pages, "huge_pages_available", lambda: True)

    def broken() -> set:
        raise OSError("no /proc here")

    monkeypatch.setattr(pages, "anonymous_regions", broken)
    assert pages.collapse_new(set()) == 0
    assert "not moved to huge pages" in caplog.text
