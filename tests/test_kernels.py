"""Kernel choice (gpt2reg.accel.kernels): it changes no result, failures fall back to plain, decisions are cached.

Timings are never asserted: which kernel wins depends on the machine. The choice is forced where a
test needs a particular kernel to run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import gpt2reg
from gpt2reg.accel import guard as load_guard
from gpt2reg.accel import kernels, tune
from gpt2reg.accel.machine import cpu_name
from gpt2reg.testing import TINY, component_names

IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3]])


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Each test: its own cache file, nothing remembered from earlier tests, one thread (tiny models),
    and every timing clean (on a busy machine decisions would not be cached, whatever the test)."""
    cache = tmp_path / "kernels.json"
    monkeypatch.setattr(kernels, "_preemptions", lambda: 0)
    monkeypatch.setattr(kernels, "_load", lambda: 0.0)  # whatever the machine's load average says
    monkeypatch.setenv("GPT2REG_KERNEL_CACHE", str(cache))
    monkeypatch.delenv("GPT2REG_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_memory", {})
    monkeypatch.setattr(kernels, "_used", {})
    monkeypatch.setattr(kernels, "_guards", [])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cache
    torch.set_num_threads(threads)


def tiny(pos: str = "learned", **overrides) -> gpt2reg.GPT:
    return gpt2reg.build_model(**{**TINY, "pos": pos, "init_std": 0.2, **overrides}, seed=0).eval()


def logits(model: gpt2reg.GPT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-sequence logits (many rows), a prefill's last logits and one decode step's (one row)."""
    with torch.inference_mode():
        full = model(IDS)
        prefill, past = model.forward_cached(IDS[:1], last_only=True)
        step, _ = model.forward_cached(torch.tensor([[11]]), past)
    return full, prefill, step


def routed_kernels(model: gpt2reg.GPT) -> set:
    """Every kernel function a tuned model calls for CPU fp32 inference."""
    found = set()
    calibrated = (kernels.CalibratedLinear, kernels.CalibratedTiedHead)
    for kernel in [m.kernel for m in model.modules() if isinstance(m, calibrated)]:
        found |= {kernel.one_row, kernel.many_rows} if isinstance(kernel, kernels.LinearKernel) else {kernel}
    return found


@pytest.mark.parametrize("pos", component_names("pos"))
@pytest.mark.parametrize("kernel", ["auto", *kernels.candidates()])
def test_kernel_choice_changes_no_result(pos: str, kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(pos)
    plain = logits(model)
    monkeypatch.setenv("GPT2REG_KERNELS", kernel)
    tune(model)
    if kernel != "auto":  # the forced kernel is the one that runs, everywhere
        assert routed_kernels(model) == {kernels.candidates()[kernel]}
    for chosen, reference in zip(logits(model), plain, strict=True):
        torch.testing.assert_close(chosen, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", list(kernels.candidates()))
def test_untied_head_and_weights_untouched(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(tie_embeddings=False)
    plain = logits(model)
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    monkeypatch.setenv("GPT2REG_KERNELS", kernel)
    tune(model)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == pointers  # nothing copied
    assert isinstance(model.lm_head, kernels.CalibratedLinear)
    for chosen, reference in zip(logits(model), plain, strict=True):
        torch.testing.assert_close(chosen, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", list(kernels.candidates()))
def test_training_and_export_take_pytorchs_own_path(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2REG_KERNELS", kernel)
    model = tune(tiny())
    with torch.no_grad():  # export traces PyTorch's own kernels, never a chosen one
        exported = torch.export.export(model, (IDS,))
    assert "mkldnn" not in exported.graph_module.code and "linear" in exported.graph_module.code
    model.train()
    model.loss(IDS, IDS).backward()  # autograd takes PyTorch's own path
    assert model.h[0].attn.c_attn.weight.grad is not None


def test_prepare_for_inference_is_deprecated_for_tune() -> None:
    model = tiny()
    with pytest.warns(DeprecationWarning, match=r"gpt2reg\.accel\.tune\(model\)"):
        assert model.prepare_for_inference() is model
    assert isinstance(model.tied_head, kernels.CalibratedTiedHead) and not model.training


# -- failures fall back to plain ----------------------------------------------------------------


def _broken(x, weight, bias=None):
    raise RuntimeError("no such kernel here")


def _wrong(x, weight, bias=None):
    return F.linear(x, weight, bias) + 1.0


@pytest.mark.parametrize("bad", [_broken, _wrong])
def test_a_failing_or_wrong_kernel_is_never_chosen(bad, monkeypatch, caplog) -> None:
    monkeypatch.setattr(kernels, "candidates", lambda: {"plain": F.linear, "bad": bad})
    model = tiny()
    plain = logits(model)
    with caplog.at_level(logging.INFO, logger="gpt2reg.accel.kernels"):
        tune(model)
    assert routed_kernels(model) == {F.linear}
    assert "kernel bad" in caplog.text  # logged, not raised
    for chosen, reference in zip(logits(model), plain, strict=True):
        torch.testing.assert_close(chosen, reference, rtol=0, atol=0)


def test_calibration_crash_falls_back_to_plain(monkeypatch, caplog) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(kernels, "measure", crash)
    model = tiny()
    with caplog.at_level(logging.WARNING, logger="gpt2reg.accel.kernels"):
        tune(model)
    assert routed_kernels(model) == {F.linear}
    assert "calibration exploded" in caplog.text


def test_unreadable_cache_is_measured_again_and_rewritten(fresh: Path, caplog) -> None:
    fresh.write_text("{not json")
    with caplog.at_level(logging.INFO, logger="gpt2reg.accel.kernels"):
        tune(tiny())
    assert "unreadable" in caplog.text
    assert kernels.machine_key() in json.loads(fresh.read_text())["machines"]


def test_plain_mode_measures_nothing(monkeypatch, fresh: Path) -> None:
    monkeypatch.setenv("GPT2REG_KERNELS", "plain")
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: pytest.fail("measured in plain mode"))
    model = tune(tiny())
    assert routed_kernels(model) == {F.linear} and not fresh.exists()


# -- the cache ----------------------------------------------------------------------------------


def test_decisions_are_cached_per_machine_torch_threads_and_shape(monkeypatch, fresh: Path) -> None:
    calls = []
    real_measure = kernels.measure
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: calls.append(a[2]) or real_measure(*a, **k))
    tune(tiny())
    assert sorted(calls) == [1, kernels.MANY_ROWS]  # one row and many rows, every shape in one pass each
    machines = json.loads(fresh.read_text())["machines"]
    key = kernels.machine_key()
    assert cpu_name() in key and torch.__version__ in key and "1 threads" in key
    n = TINY["n_embd"]
    shapes = {f"{n}x{3 * n}+bias", f"{n}x{n}+bias", f"{n}x{4 * n}+bias", f"{4 * n}x{n}+bias", f"{n}x{TINY['vocab_size']}"}
    assert set(machines[key]) == {f"{s} @ {rows}" for s in shapes for rows in kernels.ROWS}
    assert all(entry["kernel"] in kernels.candidates() for entry in machines[key].values())

    calls.clear()
    monkeypatch.setattr(kernels, "_memory", {})  # as a new process would: only the file remembers
    tune(tiny(pos="rope"))  # other weights, same shapes
    assert calls == []

    torch.set_num_threads(2)  # another thread count is another machine key
    tune(tiny())
    assert sorted(calls) == [1, kernels.MANY_ROWS]
    assert len(json.loads(fresh.read_text())["machines"]) == 2

    calls.clear()
    torch.set_num_threads(1)
    tune(tiny(n_embd=48))  # new shapes are measured, in the same file
    assert sorted(calls) == [1, kernels.MANY_ROWS]
    assert f"48x{3 * 48}+bias @ 1 row" in json.loads(fresh.read_text())["machines"][key]


def rounds(plain: list[float], fast: list[float], clean: list[bool] | None = None) -> kernels.Rounds:
    return kernels.Rounds({"plain": plain, "fast": fast}, clean if clean is not None else [True] * len(plain))


def test_pick_needs_a_clear_margin_in_most_paired_rounds() -> None:
    assert kernels.pick(rounds([1.0] * 4, [0.8] * 4)) == "fast"
    assert kernels.pick(rounds([1.0] * 4, [0.95] * 4)) == "plain"  # within the margin
    # a burst of load slows both kernels of a round: the paired ratio still says which is faster
    assert kernels.pick(rounds([1.0, 9.0, 1.0, 1.0], [0.6, 5.0, 0.6, 0.6])) == "fast"
    assert kernels.pick(rounds([1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 1.2, 1.2])) == "plain"  # faster in half the rounds only
    # rounds preempted by another process do not count when enough others are clean
    assert kernels.pick(rounds([1.0] * 4, [0.6, 0.6, 5.0, 5.0], [True, True, False, False])) == "fast"
    assert kernels.pick(kernels.Rounds({"fast": [0.5], "slow": [0.9]}, [True])) == "fast"  # plain failed to run
    assert kernels.pick(kernels.Rounds({}, [])) == "plain"


def measured_as(monkeypatch: pytest.MonkeyPatch, fast: float, clean: bool) -> list[int]:
    """``measure`` reports a candidate ``fast`` x plain's time, in clean rounds or preempted ones; the
    row counts measured from now on. (What the CPU would say is the test's input: timings are not.)"""
    calls: list[int] = []

    def fake(found, layers, rows):
        calls.append(rows)
        return {shape: kernels.Rounds({"plain": [1.0] * 4, "onednn": [fast] * 4}, [clean] * 4) for shape, _, _ in layers}

    monkeypatch.setattr(kernels, "candidates", lambda: {"plain": F.linear, "onednn": kernels._onednn})
    monkeypatch.setattr(kernels, "measure", fake)
    return calls


def test_a_decision_made_while_busy_does_not_outlive_the_load(monkeypatch, fresh: Path) -> None:
    """The trap: the first run times the kernels on a busy CPU, where the multi-threaded one loses; a
    later run on a quiet CPU must not inherit "plain" from it."""
    calls = measured_as(monkeypatch, fast=3.0, clean=False)
    assert routed_kernels(tune(tiny())) == {F.linear}  # plain while busy, in that process ...
    assert sorted(calls) == [1, kernels.MANY_ROWS]
    assert not fresh.exists()  # ... and nowhere else

    monkeypatch.setattr(kernels, "_memory", {})  # a new process, on a quiet CPU
    calls = measured_as(monkeypatch, fast=0.6, clean=True)
    assert routed_kernels(tune(tiny())) == {kernels._onednn}
    assert sorted(calls) == [1, kernels.MANY_ROWS]
    entries = json.loads(fresh.read_text())["machines"][kernels.machine_key()]
    assert all(e["kernel"] == "onednn" and e["clean_rounds"] == "4/4" and e["load"] == 0.0 for e in entries.values())


def test_a_candidate_that_wins_even_while_busy_is_cached(monkeypatch, fresh: Path) -> None:
    measured_as(monkeypatch, fast=0.6, clean=False)
    assert routed_kernels(tune(tiny())) == {kernels._onednn}
    entries = json.loads(fresh.read_text())["machines"][kernels.machine_key()]
    assert all(e["kernel"] == "onednn" and e["clean_rounds"] == "0/4" for e in entries.values())


def test_an_overloaded_cpu_starts_plain_and_measures_nothing(monkeypatch, fresh: Path) -> None:
    """There a multi-threaded kernel waits for its preempted threads: plain to start with, and no timing. What a
    quieter CPU chose stays cached for later processes, and for one row the guard tries it once the load allows."""
    calls = measured_as(monkeypatch, fast=0.6, clean=True)
    overloaded = kernels.OVERLOADED * (os.cpu_count() or 1) + 1
    monkeypatch.setattr(kernels, "_load", lambda: overloaded)
    assert routed_kernels(tune(tiny())) == {F.linear}  # nothing cached: plain, nothing to guard
    assert calls == [] and not fresh.exists() and kernels._guards == []

    monkeypatch.setattr(kernels, "_load", lambda: 0.0)
    assert routed_kernels(tune(tiny())) == {kernels._onednn}
    cached = fresh.read_text()
    monkeypatch.setattr(kernels, "_load", lambda: overloaded)
    calls.clear()
    model = tune(tiny())
    assert calls == [] and fresh.read_text() == cached
    assert routed_kernels(model) == {F.linear, kernels._onednn}  # many rows plain; one row guarded ...
    assert not kernels._guards[-1].tuned  # ... starting plain


def test_a_process_on_a_quieter_cpu_measures_again(monkeypatch, fresh: Path) -> None:
    calls = measured_as(monkeypatch, fast=0.6, clean=True)
    monkeypatch.setattr(kernels, "_load", lambda: 3.0)
    tune(tiny())
    for load, measured in ((3.0 - kernels.QUIETER / 2, False), (3.0 - kernels.QUIETER, True)):
        calls.clear()
        monkeypatch.setattr(kernels, "_memory", {})
        monkeypatch.setattr(kernels, "_load", lambda load=load: load)
        tune(tiny())
        assert bool(calls) == measured
    entries = json.loads(fresh.read_text())["machines"][kernels.machine_key()]
    assert all(e["load"] == 3.0 - kernels.QUIETER for e in entries.values())


def test_measure_interleaves_rounds_and_marks_preempted_ones(monkeypatch) -> None:
    """Real timings of two real kernels on a tiny layer: every kernel timed in every round, at least
    ``ROUNDS`` of them; a round during which the OS preempted us is marked unclean."""
    weight, bias = torch.randn(24, 16), torch.randn(24)
    found = {"plain": F.linear, "onednn": kernels._onednn} if "onednn" in kernels.candidates() else {"plain": F.linear}
    result = kernels.measure(found, [("16x24+bias", weight, bias)], 1)["16x24+bias"]
    assert set(result.seconds) == set(found) and len(result.clean) >= kernels.ROUNDS
    assert all(len(times) == len(result.clean) and min(times) > 0 for times in result.seconds.values())
    assert result.settled  # the fixture says nothing was preempted
    counter = iter(range(10**9))
    monkeypatch.setattr(kernels, "_preemptions", lambda: next(counter))
    result = kernels.measure(found, [("16x24+bias", weight, bias)], 1)["16x24+bias"]
    assert not any(result.clean) and not result.settled


# -- the load guard: a tuned one-row kernel only while it beats plain -----------------------------


class Contended:
    """The guard's clock and preemption count, playing a CPU: each guarded call takes ``cost[kernel]`` seconds
    (tuned: True), and while ``preempting`` every call counts an involuntary context switch."""

    def __init__(self, guard: load_guard.KernelGuard) -> None:
        self.guard, self.now, self.reads, self.switches = guard, 0.0, 0, 0
        self.cost, self.preempting = {True: 1.0, False: 1.7}, False
        guard.clock, guard.preemptions = self, lambda: self.switches

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:  # the read after a call
            self.now += self.cost[self.guard.tuned]
            self.switches += self.preempting
        return self.now


def guarded_model(monkeypatch: pytest.MonkeyPatch) -> tuple[gpt2reg.GPT, load_guard.KernelGuard, list[int]]:
    """A tiny model tuned to a candidate ("onednn", here F.linear counting its calls); its guard; the count."""
    used = [0]

    def counting(x, weight, bias=None):
        used[0] += 1
        return F.linear(x, weight, bias)

    measured_as(monkeypatch, fast=0.6, clean=True)
    monkeypatch.setattr(kernels, "candidates", lambda: {"plain": F.linear, "onednn": counting})
    model = tune(tiny())
    guards = {m.kernel.guard for m in model.modules() if isinstance(getattr(m, "kernel", None), kernels.LinearKernel)}
    assert len(guards) == 1 and None not in guards  # one guard for every one-row tuned layer
    return model, guards.pop(), used


def decode(model: gpt2reg.GPT, steps: int) -> list[torch.Tensor]:
    """``steps`` one-row decode steps (a new sequence every 32 tokens), their logits."""
    out, past = [], None
    with torch.inference_mode():
        for step in range(steps):
            logits, past = model.forward_cached(torch.tensor([[step % 90 + 1]]), None if step % 32 == 0 else past)
            out.append(logits)
    return out


def test_guard_falls_back_to_plain_under_load_and_returns_when_quiet(monkeypatch) -> None:
    """The burst after tuning (bench run 2 of 2026-12-06): the tuned kernel ~6x slower, plain ~2x. The guard
    must run plain within a few passes, try tuned rarely while the load lasts, and return once it is gone."""
    model, guard, used = guarded_model(monkeypatch)
    cpu = Contended(guard)
    window = guard.window
    assert window == 2 * 4 + 1  # every linear layer of the two blocks and the tied head

    def tuned_passes(steps: int) -> int:
        before = used[0]
        decode(model, steps)
        return (used[0] - before) // window

    assert tuned_passes(40) == 40 and guard.plain_passes == 0  # quiet: tuned throughout, plain never tried

    cpu.cost, cpu.preempting = {True: 6.0, False: 2.0}, True  # a burst: the two-thread kernel waits for its threads
    assert tuned_passes(100) <= load_guard.SAMPLES  # noticed within three passes; no probe while preempted
    assert not guard.tuned and guard.fallbacks == 1

    cpu.cost, cpu.preempting = {True: 4.0, False: 2.0}, False  # one core taken: plain runs unpreempted, tuned loses
    assert tuned_passes(100) <= 7  # probes after 2, 4, 8, 16, 32, 64 passes, each ended by its first pass
    assert not guard.tuned and guard.backoff >= 5

    cpu.cost = {True: 1.0, False: 1.7}  # quiet again: back within 2**backoff passes, then tuned throughout
    assert tuned_passes(2**guard.backoff + 2 * load_guard.SAMPLES + 40) >= 40
    assert guard.tuned and guard.backoff < load_guard.MAX_BACKOFF


def test_guard_ignores_noise_and_false_alarms() -> None:
    guard = load_guard.KernelGuard(window=1, preemptions=lambda: 0)
    for seconds in [1.0, 1.0, 9.0, 1.0, 1.0, 9.0, 1.0]:  # single preempted passes: the median of three holds
        guard.end_pass(seconds)
    assert guard.tuned and guard.plain_passes == 0
    slow = 0
    while guard.tuned and slow < load_guard.SAMPLES:  # slower by TRIGGER in most of the last passes: plain is tested
        guard.end_pass(2.0)
        slow += 1
    assert not guard.tuned and guard.testing
    guard.end_pass(3.5)  # ... and it is slower still (the load slows it as much): one pass, back to tuned
    assert guard.tuned and not guard.testing and guard.fallbacks == 0 and guard.backoff == 0
    for _ in range(2**load_guard.MAX_BACKOFF - 1):  # tested anyway now and then, at the cost of one plain pass
        guard.end_pass(1.0)
    assert guard.tuned
    guard.end_pass(1.0)
    assert not guard.tuned
    guard.end_pass(1.7)
    assert guard.tuned and guard.plain_passes == 2


def test_guard_accounts_real_decode_steps_and_changes_no_result(monkeypatch) -> None:
    """The real clock and kernel: a pass is a decode step, and whichever kernel runs, the logits are plain's."""
    model = tiny()
    plain = decode(model, 6)
    measured_as(monkeypatch, fast=0.6, clean=True)
    model = tune(model)
    (guard,) = kernels._guards
    tuned = decode(model, 6)
    assert guard.passes == 6 and guard.clock is time.perf_counter
    assert "load guard: plain in" in kernels.describe()
    for chosen, reference in zip(tuned, plain, strict=True):
        torch.testing.assert_close(chosen, reference, rtol=1e-5, atol=1e-5)


def test_a_guard_started_plain_tries_tuned_only_once_unpreempted() -> None:
    switches = [0]
    guard = load_guard.KernelGuard(window=1, tuned=False, preemptions=lambda: switches[0])
    for _ in range(20):  # the decoding thread preempted in every pass: tuned never tried
        switches[0] += 1
        guard.end_pass(2.0)
    assert not guard.tuned and guard.plain_passes == 20
    guard.end_pass(1.7)  # a pass unpreempted: tuned is tried ...
    assert guard.tuned and guard.testing
    for _ in range(load_guard.SAMPLES):  # ... and kept, being faster
        guard.end_pass(1.0)
    assert guard.tuned and not guard.testing and guard.plain_passes == 21
