"""Will it fit? A rough estimate before a model or a batch is allocated, instead of an OOM kill.

Torch-free (the ONNX runtime uses it too). Available memory is the kernel's ``MemAvailable``, and
when the process runs under an address-space limit (``ulimit -v``, ``RLIMIT_AS``) what is left of
that limit, whichever is smaller. Estimates are deliberately simple: they catch the sizes that
cannot possibly work (a 80 GB build, 100000 samples at once), not the last few percent.
"""

from __future__ import annotations

import resource
from typing import Any

from .errors import InputError

GB = 1e9


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_left() -> int | None:
    """What RLIMIT_AS still allows this process to map (None when there is no limit)."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(soft - used, 0)


def available() -> tuple[int | None, str]:
    """Bytes a new allocation can take in this process, and where that figure comes from."""
    free, limit = _meminfo_available(), _address_space_left()
    if limit is not None and (free is None or limit < free):
        return limit, "left under the address-space limit (ulimit -v)"
    return free, "available (MemAvailable)"


def check_fits(needed: float, what: str, advice: str, *, free: int | None = None, source: str = "") -> None:
    """Raise ``InputError`` naming the estimate and the available memory when ``needed`` bytes cannot fit."""
    if free is None:
        free, source = available()
    if free is not None and needed > free:
        raise InputError(f"{what} needs about {_size(needed)} of memory, {_size(free)} {source}; {advice}")


def resident() -> tuple[int | None, int | None]:
    """This process's resident memory now and at its peak, in bytes (Linux: VmRSS and VmHWM; elsewhere
    the peak from ``getrusage`` only)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(value.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    if "VmHWM" not in values:
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        values["VmHWM"] = peak if sys.platform == "darwin" else peak * 1024
    return values.get("VmRSS"), values["VmHWM"]


def _size(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.0f} MB"


def model_bytes(config: Any, bytes_per_value: int = 4) -> int:
    """Weights of a GPT built from ``config`` (a GPTConfig or its dict): embeddings, blocks, head."""
    c = config if isinstance(config, dict) else config.to_dict()
    d, hidden = c["n_embd"], int(round(c["mlp_ratio"] * c["n_embd"]))
    per_layer = 4 * d * d + 2 * d * hidden  # attention q, k, v, out; MLP up and down
    embeddings = c["vocab_size"] * d * (1 if c.get("tie_embeddings", True) else 2) + c["block_size"] * d
    return bytes_per_value * (c["n_layer"] * per_layer + embeddings)
