"""Runs a comparison: each variant x seed as its own ``gpt2reg train`` process, several at once if asked.

Re-running the same comparison skips finished and diverged runs and resumes partial ones (``gpt2reg train
--resume``); a run folder trained with other settings is an error before anything trains. The report is
rebuilt each time a run ends (and every minute while runs go), and once more at the end.

On a CPU, ``jobs`` processes split the cores (``OMP_NUM_THREADS`` each); with GPUs each process gets its own
(``CUDA_VISIBLE_DEVICES``), ``nproc_per_node`` of them under torchrun. Ctrl-C or SIGTERM stops the
comparison: each running process is asked to checkpoint and stop, and the same command continues later.
Should the comparison be killed outright, its processes are told (SIGTERM) and stop the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..files import write_json
from ..numbers import check_number
from .report import DEPLOY_DIR, build_report, run_state
from .spec import PLAN_FILE, Comparison, Run, format_command, train_command

LOCK_FILE = ".compare.lock"
MAX_JOBS = 256  # runs at once: more is a typo (each is a process, and a slot is set up for each)
LOGS_DIR = "logs"
REPORT_EVERY_S = 60.0  # while runs go, the report is also rebuilt this often
_IGNORED = ("out_dir", "progress")  # run.json settings that do not change what a run computes


def print_commands(comparison: Comparison, *, nproc_per_node: int = 1) -> list[str]:
    """The ``gpt2reg train`` command of every run, for a scheduler of one's own (then ``--report-only``).
    Writes the plan (``compare.json``) so that the report knows the variants."""
    comparison.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(comparison.out_dir / PLAN_FILE, comparison.to_dict(), what="the comparison plan")
    return [format_command(train_command(run, nproc_per_node=nproc_per_node)) for run in comparison.runs()]


@dataclass
class _Running:
    run: Run
    proc: subprocess.Popen
    slot: int
    start: float
    log: Any


def _mismatch(run: Run, saved: dict[str, Any]) -> str:
    """Settings of an existing run folder that differ from what the comparison asks for."""
    want = {**{f"model.{k}": v for k, v in run.model.to_dict().items()},
            **{k: v for k, v in run.train.to_dict().items() if k not in _IGNORED}}
    have = {**{f"model.{k}": v for k, v in saved.get("model", {}).items()},
            **{k: v for k, v in saved.get("train", {}).items() if k not in _IGNORED}}
    return ", ".join(f"{k}: {have.get(k)!r} there, {v!r} asked" for k, v in want.items() if have.get(k) != v)


def _slots(comparison: Comparison, jobs: int, nproc: int) -> list[dict[str, str]]:
    """The environment of each concurrent slot: which GPUs, or how many CPU threads."""
    device = comparison.settings.get("device", "auto")
    gpus = 0
    if device == "auto" or device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
    if gpus and device != "cpu":
        if ":" in device and jobs * nproc > 1:
            raise ConfigError(f"--device {device} pins one GPU; pass --device cuda (or auto) with --jobs or "
                              "--nproc-per-node, and each run gets its own GPUs")
        if jobs * nproc > gpus:
            raise ConfigError(f"--jobs {jobs} x --nproc-per-node {nproc} needs {jobs * nproc} GPUs; {gpus} visible")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(visible[i * nproc:(i + 1) * nproc])} for i in range(jobs)]
    if jobs * nproc == 1:
        return [{}]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // (jobs * nproc)))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(jobs)]


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[int | None]:
    """One comparison at a time per folder. The runs inherit the lock, so it is held until the last of them
    has stopped, even when the comparison itself was killed."""
    try:
        import fcntl
    except ImportError:  # not on Linux/macOS: no lock
        yield None
        return
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out_dir}: another gpt2reg compare (or a run it started) is still working here; "
                             "wait for it to stop") from None
        yield fd
    finally:
        os.close(fd)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the comparison dies (Linux), so a killed comparison's runs
    checkpoint and stop instead of training on unwatched."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _last_line(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1].strip() if lines else ""


def _check(comparison: Comparison, runs: list[Run], jobs: int, nproc: int, allow_changed_data: bool
           ) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """Everything that can refuse a comparison, before it writes anything: the runs' states, the slots."""
    states = {run.name: run_state(run.dir) for run in runs}
    for run in runs:  # a folder trained with other settings: stop before anything trains
        if states[run.name]["run"] is not None:
            diff = _mismatch(run, states[run.name]["run"])
            if diff:
                raise ConfigError(f"{run.dir} holds a run with other settings ({diff}); use another -o "
                                  "or remove that folder")
    if not allow_changed_data:
        from ..training.data import other_text

        other = other_text(comparison.settings["data"], [r.dir for r in runs if r.dir.is_dir()])
        if other:
            raise InputError(f"{comparison.settings['data']} is not the text run(s) {', '.join(p.name for p in other)} "
                             "were trained on (it changed since): restore it, or use another -o, or pass "
                             "--allow-changed-data to train the others on the new text (the report then says "
                             "which runs saw which data)")
    return states, _slots(comparison, jobs, nproc)


def run_comparison(comparison: Comparison, *, jobs: int = 1, nproc_per_node: int = 1, deploy: bool = False,
                   echo: Callable[[str], None] | None = None, allow_changed_data: bool = False) -> dict[str, Any]:
    """Train every run not yet finished, then report; returns the results (see ``report.collect``) plus
    ``failed`` (run -> last line of its log) and ``interrupted``.

    A corpus that is no longer the text the folder's runs were trained on is an error before anything
    trains, unless ``allow_changed_data``. Every refusal comes before the first file is written."""
    say = echo or (lambda line: None)
    for name, value, high in (("jobs", jobs, MAX_JOBS), ("nproc_per_node", nproc_per_node, 1024)):
        check_number(name, value, 1, high, integer=True, error=ConfigError)
    out = comparison.out_dir
    runs = comparison.runs()
    states, slots = _check(comparison, runs, jobs, nproc_per_node, allow_changed_data)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out) as lock_fd:
        states = {run.name: run_state(run.dir) for run in runs}  # as found under the lock
        plan = {**comparison.to_dict(), "jobs": jobs, "nproc_per_node": nproc_per_node}
        write_json(out / PLAN_FILE, plan, what="the comparison plan")
        (out / LOGS_DIR).mkdir(exist_ok=True)
        queue = [run for run in runs if states[run.name]["status"] in ("pending", "partial")]
        done = len(runs) - len(queue)
        say(f"{len(comparison.variants)} variants x {len(comparison.seeds)} seeds = {len(runs)} runs in {out}"
            + (f" ({done} already done)" if done else ""))
        for name, note in comparison.notes.items():
            say(f"{name}: {note}")
        build_report(out)
        failed: dict[str, str] = {}
        stopping = False
        running: list[_Running] = []

        def stop(signum, frame) -> None:
            nonlocal stopping
            if not stopping:
                say("stopping: each running run saves a checkpoint; run the same command to continue")
            stopping = True
            for r in running:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGTERM)

        main_thread = threading.current_thread() is threading.main_thread()  # only it may handle signals
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
        index = done
        reported = time.monotonic()
        try:
            while (queue and not stopping) or running:
                free = [i for i in range(len(slots)) if i not in {r.slot for r in running}]
                while queue and free and not stopping:
                    run, slot = queue.pop(0), free.pop(0)
                    index += 1
                    resume = states[run.name]["status"] == "partial"
                    running.append(_launch(run, slot, slots[slot], out, resume, nproc_per_node, lock_fd))
                    say(f"[{index}/{len(runs)}] {run.name}: {'resuming' if resume else 'training'} "
                        f"(log: {out / LOGS_DIR / run.name}.log)")
                time.sleep(0.05)
                if time.monotonic() - reported > REPORT_EVERY_S:  # long runs: their curves so far
                    build_report(out)
                    reported = time.monotonic()
                for r in [r for r in running if r.proc.poll() is not None]:
                    running.remove(r)
                    failure = _ended(r, out, say, stopping)
                    if failure is not None:
                        failed[r.run.name] = failure
                    build_report(out)
                    reported = time.monotonic()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for r in running:  # only after an unexpected error: do not leave runs behind
                r.proc.terminate()
                r.proc.wait()
        if deploy and not stopping:
            _deploy(comparison, out, say)
        results = build_report(out)
    results["failed"], results["interrupted"] = failed, stopping
    return results


def _launch(run: Run, slot: int, env: dict[str, str], out: Path, resume: bool, nproc_per_node: int,
            lock_fd: int | None) -> _Running:
    cmd = train_command(run, nproc_per_node=nproc_per_node, python=sys.executable, resume=resume)
    log = open(out / LOGS_DIR / f"{run.name}.log", "a", encoding="utf-8")
    log.write(f"$ {format_command(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env}, start_new_session=True, preexec_fn=_die_with_parent,
                            pass_fds=(lock_fd,) if lock_fd else ())
    return _Running(run, proc, slot, time.perf_counter(), log)


def _ended(r: _Running, out: Path, say: Callable[[str], None], stopping: bool) -> str | None:
    """Say how a run's process ended; returns the last line of its log if it failed."""
    r.log.close()
    state = run_state(r.run.dir)
    if state["status"] == "finished":
        val = next((x["val_loss"] for x in reversed(state["records"]) if "val_loss" in x), None)
        say(f"{r.run.name}: finished in {time.perf_counter() - r.start:.1f} s"
            + (f", validation loss {val:.4f}" if val is not None else ""))
    elif state["status"] == "diverged":
        say(f"{r.run.name}: diverged at step {state['records'][-1]['step']} (non-finite loss)")
    elif not stopping:
        line = _last_line(out / LOGS_DIR / f"{r.run.name}.log")
        say(f"{r.run.name}: FAILED (exit {r.proc.returncode}): {line}")
        return line
    return None


def _deploy(comparison: Comparison, out: Path, say: Callable[[str], None]) -> None:
    """Export, validate and time each variant's first finished model under onnxruntime (once per variant)."""
    from .deploy import deploy_check

    folder = out / DEPLOY_DIR
    folder.mkdir(exist_ok=True)
    for variant in comparison.variants:
        target = folder / f"{variant.name}.json"
        if target.exists():
            continue
        run = next((r for r in comparison.runs() if r.variant == variant.name
                    and run_state(r.dir)["status"] == "finished"), None)
        if run is None:
            continue
        say(f"{variant.name}: exporting {run.name} to ONNX, validating, timing decode")
        result = deploy_check(run.dir / "model", folder / f"{variant.name}.onnx")
        result["run"] = run.name
        write_json(target, result, what="the deploy result")
        if "error" in result:
            say(f"{variant.name}: {'validation' if result['exports'] else 'export'} failed: {result['error']}")
        else:
            say(f"{variant.name}: exported, {'validates' if result['validates'] else 'does NOT validate'}, "
                f"max |diff| {result['max_abs_diff']:.2e}, {result['decode_tokens_per_s']:,.0f} decode tokens/s")
