"""onnxruntime's session memory in huge pages (gpt2reg.ort.pages): only where memory lives changes.

Whether the kernel really collapses (Linux 6.1+) is checked where it can; that the contents are
unchanged, that a session's outputs are unchanged and that the off switch works, everywhere.
"""

from __future__ import annotations

import mmap
import platform

import numpy as np
import pytest

from gpt2reg.accel.machine import huge_pages_available
from gpt2reg.ort import pages
from gpt2reg.testing import TINY

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
    regions = pages.new_regions(before)
    assert any(a <= start < b for a, b in regions)
    assert all(a % pages.HUGE_PAGE == 0 and b % pages.HUGE_PAGE == 0 and b - a >= pages.MIN_BYTES for a, b in regions)
    collapsed = pages.collapse(regions)
    assert np.array_equal(data, np.arange(size, dtype=np.uint64).astype(np.uint8))
    kernel = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    if kernel >= (6, 1):  # MADV_COLLAPSE
        assert collapsed >= pages.MIN_BYTES and _huge_kb(start, start + size) >= pages.MIN_BYTES // 1024
    del data
    block.close()


def test_off_switch_leaves_memory_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2REG_HUGE_PAGES", "off")
    assert pages.anonymous_regions() == set() and pages.new_regions(set()) == []
    assert pages.collapse([(0, pages.MIN_BYTES)]) == pages.advise([(0, pages.MIN_BYTES)]) == 0


def test_a_failure_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("GPT2REG_HUGE_PAGES", raising=False)
    monkeypatch.setattr(pages, "huge_pages_available", lambda: True)

    def broken() -> set:
        raise OSError("no /proc here")

    monkeypatch.setattr(pages, "anonymous_regions", broken)
    assert pages.new_regions(set()) == []
    assert "not moved to huge pages" in caplog.text


def test_a_session_loaded_without_the_collapse_is_advised_and_collapsed_on_request(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``huge_pages=False``: the session's new memory is only advised at load; ``use_huge_pages`` moves
    that same memory once, later; the default moves it at load."""
    import gpt2reg
    from gpt2reg.ort.runtime import OnnxGPT

    path = gpt2reg.onnx.export_onnx(gpt2reg.build_model(**TINY, seed=0), tmp_path / "tiny.onnx")
    span = (0, pages.MIN_BYTES)  # a tiny model allocates less than is worth moving: stand-in regions
    calls: list[tuple[str, list]] = []
    monkeypatch.setattr(pages, "new_regions", lambda before: [span])
    monkeypatch.setattr(pages, "advise", lambda regions: calls.append(("advise", list(regions))) or 0)
    monkeypatch.setattr(pages, "collapse", lambda regions: calls.append(("collapse", list(regions))) or 0)
    monkeypatch.setattr("gpt2reg.ort.runtime.collapse", pages.collapse)
    lazy = OnnxGPT(path, provider="cpu", huge_pages=False)
    assert calls == [("advise", [span])]
    lazy.use_huge_pages()
    lazy.use_huge_pages()  # once only
    assert calls == [("advise", [span]), ("collapse", [span]), ("collapse", [])]
    calls.clear()
    eager = OnnxGPT(path, provider="cpu")
    eager.use_huge_pages()  # nothing left to move
    assert calls == [("collapse", [span]), ("collapse", [])]
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(lazy.logits(ids), eager.logits(ids))


@pytest.mark.parametrize("new_tokens", [64, 512])
def test_generate_onnx_moves_to_huge_pages_only_for_a_long_run(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                               new_tokens: int) -> None:
    from click.testing import CliRunner

    from gpt2reg.cli import cli
    from gpt2reg.cli.generate_cmds import HUGE_PAGES_FROM
    from gpt2reg.errors import InputError

    seen = {}

    def opened(path, **kwargs):
        seen.update(kwargs)
        raise InputError("opened")

    monkeypatch.setattr("gpt2reg.ort.runtime.OnnxGPT", opened)
    (tmp_path / "m.onnx").write_bytes(b"")
    result = CliRunner().invoke(cli, ["generate", "--onnx", str(tmp_path / "m.onnx"), "-p", "Hi", "-n", str(new_tokens)])
    assert "opened" in result.output and seen["huge_pages"] is (new_tokens >= HUGE_PAGES_FROM)
