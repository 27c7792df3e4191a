"""Which kernel runs each CPU linear layer at inference, chosen by timing the candidates on this machine.

PyTorch's own ``F.linear`` is the reference ("plain"). oneDNN's ``_linear_pointwise`` computes the same
product from the same row-major fp32 weights, in place (nothing copied): on a 2-core AMD EPYC it decodes
~1.7x faster (it splits a one-row product over the threads, where MKL's runs on one), yet on an Intel
Sapphire Rapids Xeon it was measured slower. So nothing is assumed about a CPU: ``use_fastest_kernels``
times every candidate on the model's own weights, for one row (a decode step) and for many rows (a
prefill), in interleaved rounds, and keeps a candidate only where it beats plain by ``MARGIN`` in the
median round and in ``WINS`` of the rounds (``pick``).

A decision must not depend on when it was measured. On a busy CPU a multi-threaded kernel waits for its
preempted threads (on the 2-core EPYC at load 15, oneDNN's one-row calls ran ~7x slower than plain's,
which were unaffected; whole 16-token greedy decodes, interleaved, at load 13: ~2x slower), so timings
taken there describe the load, and so would a decision used there. With the 1-minute load average over
``OVERLOADED`` threads per core a process therefore takes plain everywhere and measures nothing (the
cache is kept for later processes). Otherwise rounds in which the OS preempted our threads do not
count when enough others are clean, and "plain" from mostly preempted rounds is used by that process
only, never cached. Cached decisions, keyed by CPU model, torch version, thread count and layer shape
in a JSON file, carry the load they were measured at, and a process that starts on a CPU quieter by
``QUIETER`` measures again. The calibration (a few hundred ms for GPT-2 small) is otherwise paid once
per machine. Load that comes after the choice is the guard's (``gpt2reg.accel.guard``): while decoding, a
tuned one-row kernel runs only while its timed passes beat plain's under the load of the moment.

Environment:
  ``GPT2REG_KERNELS``        ``auto`` (default); ``plain``: PyTorch's kernel everywhere, nothing measured;
                             a candidate's name (``onednn``): that kernel everywhere it applies, unmeasured.
  ``GPT2REG_KERNEL_CACHE``   the cache file, default ``$XDG_CACHE_HOME/gpt2reg/kernels.json`` (or
                             ``~/.cache/gpt2reg/kernels.json``); ``off``: keep decisions in memory only.
                             Deleting the file makes the next run measure again.
  ``GPT2REG_KERNELS_DEBUG``  ``1``: log each decision and any fallback to stderr.

Only no-grad CPU fp32 calls outside tracing, ``torch.compile`` and ``torch.export`` take a chosen kernel,
so training, autograd and ONNX export always run PyTorch's own. Any failure (a missing op, a candidate
raising or disagreeing with plain, an unreadable cache) falls back to plain and is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    import resource
except ImportError:  # not on Windows: every pass counts as clean there
    resource = None
from torch.nn import functional as F

from ..errors import OutputError
from ..files import write_json
from ..model import GPT, TiedHead
from .guard import KernelGuard
from .machine import cpu_name

log = logging.getLogger(__name__)

Kernel = Callable[..., torch.Tensor]  # F.linear's signature: (x, weight, bias=None)
Layer = tuple[torch.Tensor, torch.Tensor | None]  # (weight (out, in), bias)

MARGIN = 0.10  # a candidate must be at least this much faster than plain to be chosen ...
WINS = 2 / 3  # ... in at least this share of the rounds, and in the median round
MANY_ROWS = 32  # the row count that stands for prefill and batches; one row stands for a decode step
ROUNDS = 4  # interleaved rounds at least (a round: one pass per kernel, in turn)
ROUNDS_MAX = 24  # and at most, while within BUDGET_S
BUDGET_S = 0.3  # per row count
OVERLOADED = 2.0  # runnable threads per core (1-minute load average) above which nothing is measured
QUIETER = 1.0  # a decision is measured again by a process that starts with a load this much lower
CACHE_VERSION = 3  # 3: settled decisions only, with the load they were measured at (2 kept busy ones an hour)


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def candidates() -> dict[str, Kernel]:
    """Kernels giving ``F.linear``'s result from the same tensors without copying them; plain first."""
    found: dict[str, Kernel] = {"plain": F.linear}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        found["onednn"] = _onednn
    return found


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Where a chosen kernel may replace F.linear: CPU fp32, no autograd, no tracing, compile or export."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
    )


class LinearKernel:
    """Called like ``F.linear``: the kernel chosen for one row or for many where it applies, else F.linear.

    ``guard``, when set, runs the one-row calls (``gpt2reg.accel.guard``: plain while the CPU is contended)."""

    __slots__ = ("one_row", "many_rows", "guard")

    def __init__(self, one_row: Kernel, many_rows: Kernel, guard: KernelGuard | None = None) -> None:
        self.one_row, self.many_rows, self.guard = one_row, many_rows, guard

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if not applies(x, weight):
            return F.linear(x, weight, bias)
        if x.numel() != x.shape[-1]:
            return self.many_rows(x, weight, bias)
        return self.one_row(x, weight, bias) if self.guard is None else self.guard(self.one_row, x, weight, bias)


class CalibratedLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose forward runs the kernel chosen for its shape."""

    kernel: Kernel = F.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, self.weight, self.bias)


class CalibratedTiedHead(TiedHead):
    """A ``TiedHead`` whose projection runs the kernel chosen for the embedding's shape."""

    kernel: Kernel = F.linear

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, weight)


# -- the choice ---------------------------------------------------------------------------------


def use_fastest_kernels(model: GPT) -> None:
    """Give every ``nn.Linear`` in ``model``, and its tied head, the kernel measured fastest here for its
    shape; in place (the modules' classes become ``CalibratedLinear`` / ``CalibratedTiedHead``).

    No weight is copied; layers not on CPU in fp32 keep ``F.linear``. Never raises: a failure means
    plain, logged.
    """
    _debug_to_stderr()
    linears = [m for m in model.modules() if type(m) in (nn.Linear, CalibratedLinear)]
    layers: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = [(m, m.weight, m.bias) for m in linears]
    if isinstance(model.tied_head, TiedHead):
        layers.append((model.tied_head, model.wte.weight, None))
    groups: dict[str, list[Layer]] = {}
    for _, weight, bias in layers:
        groups.setdefault(shape_key(weight, bias), []).append((weight, bias))
    groups = {k: shape_layers for k, shape_layers in groups.items() if all(_eligible(w) for w, _ in shape_layers)}
    try:
        chosen = _choose(groups)
    except Exception as exc:  # the fast path is an optimisation: never let it stop inference
        log.warning("kernel choice failed, using PyTorch's own linear kernel: %s: %s", type(exc).__name__, exc)
        chosen = {}
    for module, weight, bias in layers:
        module.__class__ = CalibratedTiedHead if isinstance(module, TiedHead) else CalibratedLinear
        module.kernel = chosen.get(shape_key(weight, bias), F.linear)


def shape_key(weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """``in x out`` of a linear layer, ``+bias`` when it has one: ``768x2304+bias``."""
    out_features, in_features = weight.shape
    return f"{in_features}x{out_features}" + ("+bias" if bias is not None else "")


def _eligible(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2


_used: dict[str, dict[str, str]] = {}  # rows -> shape -> kernel name, for describe()
_guards: list[KernelGuard] = []  # this process's, for describe()


def describe() -> str:
    """The kernels chosen in this process: ``1 row: onednn 768x2304+bias, ...; 64 rows: ...``."""
    parts = []
    for rows, shapes in _used.items():
        by_kernel: dict[str, list[str]] = {}
        for shape, name in shapes.items():
            by_kernel.setdefault(name, []).append(shape)
        parts.append(f"{rows}: " + "; ".join(f"{name} {', '.join(s)}" for name, s in sorted(by_kernel.items())))
    if _guards:
        parts.append("load guard: " + "; ".join(guard.describe() for guard in _guards))
    return " | ".join(parts) if parts else "plain (no CPU fp32 linear layer prepared)"


def _choose(groups: dict[str, list[Layer]]) -> dict[str, Kernel]:
    """shape key -> the kernel for that shape (absent where plain wins for one row and for many)."""
    found = candidates()
    mode = os.environ.get("GPT2REG_KERNELS", "auto").strip().lower() or "auto"
    if mode not in ("auto", "plain", *found):
        log.warning("GPT2REG_KERNELS=%s is not auto, plain or one of %s; using auto", mode, ", ".join(found))
        mode = "auto"
    load = _load()
    overloaded = load is not None and load > OVERLOADED * (os.cpu_count() or 1)
    if mode != "auto" or len(found) == 1:
        name = mode if mode in found else "plain"
        decided = {rows: dict.fromkeys(groups, name) for rows in ROWS}
    elif overloaded:
        # A multi-threaded kernel waits for its preempted threads here: plain now, and no timing, which would
        # describe the load. What a quieter CPU chose for one row stays cached, and the guard starts plain and
        # tries it once the load lets the decoding thread run unpreempted.
        log.info("CPU overloaded (load %.1f on %d cores): PyTorch's own kernels to start with", load,
                 os.cpu_count() or 1)
        cache = _Cache()
        decided = {rows: dict.fromkeys(groups, "plain") for rows in ROWS}
        decided["1 row"] = {shape: name if (name := cache.get(shape, "1 row")) in found else "plain" for shape in groups}
    else:
        cache = _Cache()
        decided = {rows: {shape: cache.get(shape, rows) for shape in groups} for rows in ROWS}
        for rows, count in ROWS.items():
            missing = [shape for shape, name in decided[rows].items() if name not in found]
            if not missing:
                continue
            # One row: a decode step, every layer read in turn, mostly from memory, so the pass goes
            # over all of them in the model's order. Many rows: compute-bound, one layer per shape.
            layers = [(s, w, b) for s in groups for w, b in (groups[s] if count == 1 else groups[s][:1])]
            measured = measure(found, layers, count)
            for shape in missing:
                name = decided[rows][shape] = pick(measured[shape])
                if measured[shape].settled or name != "plain":
                    cache.put(shape, rows, name, measured[shape], load)
                else:  # plain from noisy rounds may be the noise (it slows a multi-threaded kernel most)
                    log.info("CPU busy while timing %s at %s: plain in this process, not cached", shape, rows)
        cache.save()
    _record(decided)
    one, many = decided["1 row"], decided[f"{MANY_ROWS} rows"]
    # auto: a one-row kernel chosen at tuning time runs only while it beats plain (load may come later)
    guarded = [shape for shape in groups if one[shape] != "plain"] if mode == "auto" else []
    guard = KernelGuard(sum(len(groups[shape]) for shape in guarded), tuned=not overloaded) if guarded else None
    if guard is not None:
        _guards.append(guard)
    return {
        shape: LinearKernel(found[one[shape]], found[many[shape]], guard if shape in guarded else None)
        for shape in groups
        if one[shape] != "plain" or many[shape] != "plain"
    }


ROWS = {"1 row": 1, f"{MANY_ROWS} rows": MANY_ROWS}  # what each decision is measured at


def _record(decided: dict[str, dict[str, str]]) -> None:
    for rows, shapes in decided.items():
        _used.setdefault(rows, {}).update(shapes)
        for shape, name in shapes.items():
            log.debug("kernel for %s at %s: %s", shape, rows, name)


@dataclass
class Rounds:
    """One shape's interleaved measurement: per kernel, the seconds its calls took in each round, and
    per round whether it was clean (no pass of it preempted by the OS for another process)."""

    seconds: dict[str, list[float]]
    clean: list[bool]

    @property
    def settled(self) -> bool:
        """At least half the rounds (and two) clean: the timings say what the kernels cost, not the load."""
        return sum(self.clean) >= max(2, len(self.clean) / 2)

    def ratios(self, name: str) -> list[float]:
        """``name``'s time over plain's, round by round (the clean rounds where the measurement is settled)."""
        rounds = [i for i, clean in enumerate(self.clean) if clean or not self.settled]
        return [self.seconds[name][i] / self.seconds["plain"][i] for i in rounds]


def pick(rounds: Rounds) -> str:
    """The candidate faster than plain by ``MARGIN`` in the median round and in ``WINS`` of the rounds
    (the paired rounds, so a burst of load slows both sides of a ratio), the fastest such; else plain."""
    if "plain" not in rounds.seconds:  # plain failed to run: the fastest that works, if any
        medians = {name: statistics.median(s) for name, s in rounds.seconds.items()}
        return min(medians, key=medians.get) if medians else "plain"
    best, best_ratio = "plain", 1 - MARGIN
    for name in rounds.seconds:
        if name == "plain":
            continue
        ratios = rounds.ratios(name)
        median = statistics.median(ratios)
        if median <= best_ratio and sum(r <= 1 - MARGIN for r in ratios) >= WINS * len(ratios):
            best, best_ratio = name, median
    return best


def measure(kernels: dict[str, Kernel], layers: list[tuple[str, torch.Tensor, torch.Tensor | None]], rows: int,
            ) -> dict[str, Rounds]:
    """shape -> its ``Rounds`` over ``layers`` (shape, weight, bias), each called with ``rows`` rows.

    A round runs one pass per kernel, each pass calling it on every layer in order and timing each
    call alone; the kernels take turns first, round by round. A pass during which the OS preempted one
    of our threads (another process wanted the core) makes its round unclean. A kernel that raises, or
    whose result differs from F.linear's beyond fp32 rounding, is left out for that shape (logged).
    Rounds: at least ``ROUNDS`` (after one untimed warm-up pass per kernel), more while within
    ``BUDGET_S`` and ``ROUNDS_MAX``.
    """
    generator = torch.Generator().manual_seed(0)
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], generator=generator) for _, w, _ in layers}
    usable: dict[str, dict[str, Kernel]] = {}  # shape -> the kernels that work for it
    names = list(kernels)
    with torch.inference_mode():
        for shape, weight, bias in layers:
            if shape not in usable:
                usable[shape] = _working(kernels, shape, inputs[weight.shape[1]], weight, bias)
        for name in names:  # warm-up: first calls allocate and pick code paths
            for shape, weight, bias in layers:
                if name in usable[shape]:
                    usable[shape][name](inputs[weight.shape[1]], weight, bias)
        measured = {shape: Rounds({name: [] for name in works}, []) for shape, works in usable.items()}
        start = time.perf_counter()
        for done in range(ROUNDS_MAX):
            if done >= ROUNDS and time.perf_counter() - start > BUDGET_S:
                break
            clean = dict.fromkeys(usable, True)
            for name in names[done % len(names):] + names[: done % len(names)]:
                spent = dict.fromkeys(usable, 0.0)
                for shape, weight, bias in layers:
                    kernel = usable[shape].get(name)
                    if kernel is None:
                        continue
                    switches = _preemptions()
                    began = time.perf_counter()
                    kernel(inputs[weight.shape[1]], weight, bias)
                    spent[shape] += time.perf_counter() - began
                    clean[shape] = clean[shape] and _preemptions() == switches
                for shape in usable:
                    if name in usable[shape]:
                        measured[shape].seconds[name].append(spent[shape])
            for shape in usable:
                measured[shape].clean.append(clean[shape])
    return measured


def _working(kernels: dict[str, Kernel], shape: str, x: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None) -> dict[str, Kernel]:
    """The kernels that run and give F.linear's result within fp32 rounding for this layer."""
    reference = F.linear(x, weight, bias)
    tolerance = 1e-4 * float(reference.abs().max()) + 1e-6
    works = {}
    for name, kernel in kernels.items():
        try:
            diff = float((kernel(x, weight, bias) - reference).abs().max())
        except Exception as exc:
            log.info("kernel %s unusable for %s: %s: %s", name, shape, type(exc).__name__, exc)
            continue
        if diff <= tolerance:
            works[name] = kernel
        else:
            log.info("kernel %s differs from F.linear by %.3g on %s; not used", name, diff, shape)
    return works


def _load() -> float | None:
    """The 1-minute load average (runnable threads), None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _preemptions() -> int:
    """Involuntary context switches of this process's threads so far (0 where the OS does not say)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw if resource is not None else 0


# -- the cache ----------------------------------------------------------------------------------


def cache_path() -> Path | None:
    """Where decisions persist (``GPT2REG_KERNEL_CACHE``; ``off``: nowhere)."""
    override = os.environ.get("GPT2REG_KERNEL_CACHE")
    if override is not None:
        return None if override.strip().lower() in ("", "off", "0", "none") else Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpt2reg" / "kernels.json"


def machine_key() -> str:
    """What a decision depends on besides the shape: CPU model, torch version, thread count."""
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


_memory: dict[str, dict[str, dict[str, Any]]] = {}  # machine key -> entry key -> decision, this process


class _Cache:
    """Decisions for this machine: this process's, then the JSON file's; new ones written back atomically."""

    def __init__(self) -> None:
        self.machine = machine_key()
        self.path = cache_path()
        self.entries = _memory.setdefault(self.machine, {})
        self.new: dict[str, dict[str, Any]] = {}
        if not self.entries and self.path is not None:
            self.entries.update(self._read().get(self.machine, {}))

    def get(self, shape: str, rows: str) -> str | None:
        """The cached kernel name; None if never measured, or if this process starts on a CPU quieter by
        ``QUIETER`` than the one the decision was measured on (its timings may have been the load's)."""
        entry = self.entries.get(f"{shape} @ {rows}")
        if not isinstance(entry, dict) or not isinstance(entry.get("kernel"), str):
            return None
        load, then = _load(), entry.get("load")
        if load is not None and isinstance(then, (int, float)) and load <= then - QUIETER:
            log.info("%s @ %s was measured at load %.1f, now %.1f: measuring again", shape, rows, then, load)
            return None
        return entry["kernel"]

    def put(self, shape: str, rows: str, name: str, rounds: Rounds, load: float | None) -> None:
        """Remember a decision, the median time of each kernel and the load it was measured at."""
        entry: dict[str, Any] = {"kernel": name,
                                 "us": {k: round(statistics.median(v) * 1e6, 1) for k, v in rounds.seconds.items()},
                                 "clean_rounds": f"{sum(rounds.clean)}/{len(rounds.clean)}"}
        if load is not None:
            entry["load"] = round(load, 2)
        self.entries[f"{shape} @ {rows}"] = self.new[f"{shape} @ {rows}"] = entry
        log.debug("measured %s @ %s: %s", shape, rows, entry)

    def _read(self) -> dict[str, dict[str, Any]]:
        """The file's machines; a missing file is empty, an unreadable one too (logged, then rewritten)."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == CACHE_VERSION and isinstance(data.get("machines"), dict):
                return data["machines"]
            log.info("kernel cache %s has another format; measuring again", self.path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.info("kernel cache %s unreadable (%s); measuring again", self.path, exc)
        return {}

    def save(self) -> None:
        """Merge this run's new decisions into the file: a temporary file renamed over it."""
        if not self.new or self.path is None:
            return
        try:
            machines = self._read()
            machines.setdefault(self.machine, {}).update(self.new)
            write_json(self.path, {"version": CACHE_VERSION, "machines": machines}, what="the kernel cache")
        except (OSError, OutputError) as exc:
            log.info("kernel cache %s not written (%s); decisions kept for this process", self.path, exc)
        self.new = {}


def _debug_to_stderr() -> None:
    if os.environ.get("GPT2REG_KERNELS_DEBUG", "") not in ("", "0") and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("gpt2reg.accel.kernels: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)


__all__ = [
    "CalibratedLinear",
    "CalibratedTiedHead",
    "LinearKernel",
    "applies",
    "cache_path",
    "candidates",
    "describe",
    "machine_key",
    "measure",
    "pick",
    "Rounds",
    "use_fastest_kernels",
]
