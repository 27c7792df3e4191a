"""What machine this is, for figures that hold only where they were measured. Imports no torch."""

from __future__ import annotations

import mmap
import os
import platform
from pathlib import Path

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGE = 2 * 2**20  # an x86-64 transparent huge page
MIN_BYTES = 4 * 2**20  # less memory than this stays within the TLB's reach: nothing to gain from huge pages


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """The CPU cores, not counting SMT siblings (onnxruntime's default thread count); else the logical CPUs."""
    cores = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
        try:
            cores.add(((cpu / "topology/physical_package_id").read_text().strip(),
                       (cpu / "topology/core_id").read_text().strip()))
        except OSError:
            continue
    return len(cores) or os.cpu_count() or 1


def huge_pages_available() -> bool:
    """Whether the OS backs memory advised ``MADV_HUGEPAGE`` with huge pages (Linux THP not ``never``).

    ``GPT2REG_HUGE_PAGES=off`` says no: weights then stay in ordinary pages, for torch and onnxruntime.
    """
    if not hasattr(mmap, "MADV_HUGEPAGE") or os.environ.get("GPT2REG_HUGE_PAGES", "").strip().lower() in (
            "0", "off", "no", "false"):
        return False
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False
