"""While decoding, keep a tuned one-row kernel only while it beats PyTorch's own: the fallback for load that comes
after the kernels were chosen.

The choice in ``gpt2reg.accel.kernels`` is made when the model is tuned. A multi-threaded kernel (oneDNN's one-row
product splits over the threads) then waits for whichever of its threads the OS preempts, so a burst of other jobs
that starts later can make it several times slower than plain's one thread (on the 2-core EPYC at load 15, a pass of
oneDNN's one-row calls took ~7x plain's). ``KernelGuard`` watches the thing itself: the time of each *pass* (one call
of every guarded layer: a decode step's one-row products), and compares the two kernels under the load of the moment:

- The kernel in use is *tested* against the other when its last ``SAMPLES`` passes are, in the median, ``TRIGGER``
  x slower than the fastest tuned pass seen (tuned), or every ``2**backoff`` passes (plain; tuned too, every
  ``2**MAX_BACKOFF``, in case the fastest was itself measured under load). Plain tests tuned only after a pass in
  which the OS did not preempt the decoding thread (its involuntary context switches): while the load that made it
  fall back lasts, a probe would only cost a slow pass.
- A test runs the other kernel for ``SAMPLES`` passes and keeps it if their median beats the median of the last
  ``SAMPLES`` passes before it; a tested pass slower than ``ABORT`` x that median ends the test at once, so a clear
  loser costs one pass.
- ``backoff`` grows by one (at most ``MAX_BACKOFF``) each time tuned loses a test and shrinks by one each time it
  wins, so a lasting load costs at most one slow pass in ``2**backoff``.

Two clock reads per guarded call, a counter and, once per pass, a few comparisons (and, while plain, one
``getrusage``). Passes are counted by calls (``window``: the number of guarded layers), which holds as long as every
guarded layer runs once per step, as in a GPT decode step. Only the one-row path is guarded; many rows (prefill,
batches) keep their kernel.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

try:
    import resource

    RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)  # Linux
except ImportError:  # Windows
    RUSAGE_THREAD = None

log = logging.getLogger("gpt2reg.accel.kernels")

Kernel = Callable[..., torch.Tensor]

SAMPLES = 3  # passes behind each decision (a median, so one preempted pass decides nothing)
TRIGGER = 1.5  # tuned passes this much slower than the fastest tuned pass seen: test plain
ABORT = 1.5  # a tested kernel's pass this much slower than the other's median ends its test
MAX_BACKOFF = 8  # tests at least every 2**backoff passes, backoff <= this (256 passes)


class KernelGuard:
    """Shared by one model's one-row ``LinearKernel``\\ s: runs their tuned kernel or ``F.linear``, timing each call.

    ``clock`` is injectable so that tests can play the timings they are about.
    """

    __slots__ = ("window", "clock", "preemptions", "tuned", "calls", "spent", "fastest", "recent", "testing",
                 "backoff", "countdown", "switches", "started_tuned", "passes", "plain_passes", "fallbacks")

    def __init__(self, window: int, tuned: bool = True, clock: Callable[[], float] = time.perf_counter,
                 preemptions: Callable[[], int] | None = None) -> None:
        self.window, self.clock = max(1, window), clock
        self.preemptions = preemptions or thread_preemptions
        self.tuned = self.started_tuned = tuned  # the current pass's kernel (plain to start on an overloaded CPU)
        self.calls, self.spent = 0, 0.0  # in the current pass
        self.fastest = math.inf  # the fastest tuned pass seen
        self.recent: dict[bool, list[float]] = {True: [], False: []}  # last passes per kernel (tuned: True)
        self.testing = False  # the kernel in use is on test (its recent passes are all test passes)
        self.backoff = 0
        self.countdown = 2**MAX_BACKOFF if tuned else 1  # passes until the kernel in use is tested anyway
        self.switches = -1  # the decoding thread's involuntary context switches at the end of the last plain pass
        self.passes = self.plain_passes = self.fallbacks = 0  # for describe()

    def __call__(self, kernel: Kernel, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
        """``kernel(x, weight, bias)``, or ``F.linear``'s while the guard holds plain; the call is timed."""
        began = self.clock()
        out = (kernel if self.tuned else F.linear)(x, weight, bias)
        self.spent += self.clock() - began
        self.calls += 1
        if self.calls >= self.window:
            self.end_pass(self.spent)
            self.calls, self.spent = 0, 0.0
        return out

    def end_pass(self, seconds: float) -> None:
        """Account a finished pass of ``seconds`` and choose the kernel for the next."""
        self.passes += 1
        self.plain_passes += not self.tuned
        self.countdown -= 1
        recent = self.recent[self.tuned]
        recent.append(seconds)
        del recent[:-SAMPLES]
        if self.tuned:
            self.fastest = min(self.fastest, seconds)
        if self.testing:
            self._test(seconds)
        elif (self._unpreempted() and self.countdown <= 0) if not self.tuned else (self.countdown <= 0 or (
            len(recent) == SAMPLES and statistics.median(recent) > TRIGGER * self.fastest
        )):
            self.testing = True
            self.recent[not self.tuned].clear()
            self._switch(not self.tuned, "testing")

    def _unpreempted(self) -> bool:
        """Whether the OS left the decoding thread alone during this plain pass (read at the end of every one)."""
        switches, self.switches = self.switches, self.preemptions()
        return switches == self.switches

    def _test(self, seconds: float) -> None:
        """One more pass of the kernel on test: keep it, go back, or wait for the next pass."""
        other, tested = statistics.median(self.recent[not self.tuned]), self.recent[self.tuned]
        if seconds <= ABORT * other and len(tested) < SAMPLES:
            return
        mine, self.testing = statistics.median(tested), False
        won = mine < other
        if won != self.tuned:  # plain won, or tuned lost: tuned loses
            self.backoff = min(self.backoff + 1, MAX_BACKOFF)
        else:
            self.backoff = max(self.backoff - 1, 0)
        if won:
            self.fallbacks += not self.tuned
            if not self.tuned:
                log.info("kernel guard: plain kernels while the CPU is contended (pass %.2f ms, tuned %.2f ms)",
                         mine * 1e3, other * 1e3)
            self.countdown = 2 ** (MAX_BACKOFF if self.tuned else self.backoff)
        else:
            self._switch(not self.tuned, f"{mine * 1e3:.2f} ms vs {other * 1e3:.2f} ms")
            self.recent[self.tuned].clear()  # the passes that made it test: judge it on fresh ones

    def _switch(self, tuned: bool, why: str) -> None:
        self.tuned = tuned
        self.countdown = 2 ** (MAX_BACKOFF if tuned else self.backoff)
        log.debug("kernel guard: %s (%s)", "tuned" if tuned else "plain", why)

    def describe(self) -> str:
        """How often the guard ran plain: ``plain in 3 of 130 passes (1 fallbacks)``."""
        start = "" if self.started_tuned else ", started plain: CPU overloaded"
        return f"plain in {self.plain_passes} of {self.passes} passes ({self.fallbacks} fallbacks{start})"


def thread_preemptions() -> int:
    """The calling thread's involuntary context switches so far; 0 where the OS does not say (never preempted)."""
    return resource.getrusage(RUSAGE_THREAD).ru_nivcsw if RUSAGE_THREAD is not None else 0
