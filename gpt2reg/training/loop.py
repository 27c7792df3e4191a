"""The training loop: data, model, AdamW, checkpoints, logs, samples; resumable and DDP-aware.

A run folder holds everything a run writes (only rank 0 writes)::

    run.json            the training settings, the model config and where it started from
    tokens.bin/.json    the tokenized corpus (uint16, memory-mapped) and its fingerprint
    metrics.jsonl       one JSON object per step: step, loss, lr, grad_norm, tokens, tokens_per_s, batch_sha256, ...
    loss.png            train and validation loss, redrawn at each evaluation
    samples.txt         a sample generated at each evaluation
    checkpoints/        step-NNNNNN.pt: model, optimizer, RNG states (the newest ``keep_checkpoints``)
    model/              the final model directory, readable by every other command

Resuming restores weights, optimizer moments, step (hence schedule and data position) and each rank's
RNG state, so a run killed at any moment and resumed logs the same losses as one never interrupted.

What a run saw is on record, so runs can be shown to have seen the same data: each step's
``batch_sha256`` digests the windows of that step (this rank's micro-batches), and ``run.json``'s
``val_windows_sha256`` the validation windows. A step whose loss is not finite ends the run: its
record has ``"diverged": true`` (loss null), no checkpoint or model is saved from the broken weights,
and the summary says ``diverged``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..accel.device import autocast, available_memory, resolve_device, resolve_dtype
from ..config import GPTConfig
from ..errors import ConfigError, InputError
from ..files import append_text, check_folder, write_json
from ..model import GPT
from ..tokenizer import get_tokenizer
from . import distributed
from .checkpoint import (
    checkpoint_paths,
    load_latest,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .data import TOKENS_FILE, TOKENS_META, TokenData, cache_tokens, load_tokens, unigram_entropy, unigram_loss
from .metrics import METRICS_FILE, PLOT_FILE, MetricsLog, plot_losses
from .optim import lr_at, make_optimizer
from .sample import sample_text

RUN_FILE = "run.json"
MODEL_DIR = "model"
SAMPLES_FILE = "samples.txt"

ModelSpec = GPTConfig | GPT | str | os.PathLike | None


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``run.json`` of a run folder."""
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{run_dir}: no training run here (no {RUN_FILE})") from None
    except ValueError as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None


def resume_config(run_dir: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The settings a run was started with, with ``overrides`` applied (e.g. a larger ``max_steps``)."""
    saved = read_run(run_dir)["train"]
    return TrainConfig.from_dict({**saved, "out_dir": str(run_dir), **overrides})


def resume_conflicts(run_dir: str | os.PathLike, model: dict[str, Any] | None = None, init: str | None = None,
                     **train: Any) -> None:
    """Refuse a resume whose options differ from the run's saved ones, naming each field and both values.

    Options equal to the saved ones are fine (re-running the first command with ``--resume`` added
    is what most people do). ``model`` holds GPTConfig fields, ``init`` the checkpoint the run started
    from, ``train`` TrainConfig fields that must not change mid-run (e.g. ``data``).
    """
    run = read_run(run_dir)
    differ = []
    for name, value in (model or {}).items():
        saved = run.get("model", {}).get(name)
        if saved != value:
            differ.append(f"{name} (run: {saved!r}, given: {value!r})")
    if init is not None and init != run.get("init"):
        differ.append(f"init (run: {run.get('init')!r}, given: {init!r})")
    for name, value in train.items():
        saved = run.get("train", {}).get(name)
        if name == "data" and value is not None:
            value = str(Path(value).expanduser().resolve())
        if saved != value:
            differ.append(f"{name} (run: {saved!r}, given: {value!r})")
    if differ:
        raise InputError(f"--resume continues the run saved in {Path(run_dir) / RUN_FILE}, but "
                         f"{'; '.join(differ)}; drop or correct these options, or start a new run in another folder")


def train(config: TrainConfig, model: ModelSpec = None, *, resume: bool = False) -> dict[str, Any]:
    """Train ``model`` (a GPTConfig to build, a GPT, or a checkpoint to fine-tune; default GPT-2 small).

    With ``resume`` the model and state come from the newest checkpoint in ``config.out_dir``. Under
    torchrun every process calls this; the returned summary is the same on every rank.
    """
    device = resolve_device(config.device)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    group = distributed.init(device)
    run_dir = Path(config.out_dir)
    try:
        existed = run_dir.is_dir()
        new = not resume and (not run_dir.exists() or (existed and not any(run_dir.iterdir())))
    except OSError:  # a name the file system cannot hold (check_run_dir says so): nothing to clean up
        existed = new = False
    try:
        return _Trainer(config, model, resume, device, group).run()
    except Exception:
        # A new run that failed (a full disk, a bad corpus) before its first checkpoint: nothing worth
        # resuming, so nothing is left that looks like a run (an empty folder given with -o stays).
        if new and group.is_main and run_dir.is_dir() and not checkpoint_paths(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            if existed:
                run_dir.mkdir(exist_ok=True)
        raise
    finally:
        if owns_group:
            distributed.shutdown(group)


class _WithLoss(nn.Module):
    """The model plus its loss as one forward, so DDP's gradient hooks and torch.compile see all of it."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y)


def estimate_memory(config: GPTConfig, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
    """Rough peak bytes of one training micro-step: fp32 weights, grads, Adam moments, activations.

    Activations: ~17 values per layer per token per channel (Korthikanti et al. 2022, attention
    scores not materialised by SDPA), plus fp32 logits, their softmax and gradient.
    """
    n_params = config.vocab_size * config.n_embd + config.n_layer * 12 * config.n_embd**2
    act_bytes = 2 if dtype == torch.bfloat16 else 4
    per_token = config.n_layer * 17 * config.n_embd * act_bytes + 3 * config.vocab_size * 4
    return 16 * n_params + batch_size * seq_len * per_token


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _arrays_digest(*arrays) -> str:
    """A short digest of numpy arrays' contents (what a run saw; 16 hex digits are plenty to compare)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _memory_error(batch_size: int, seq_len: int, detail: str = "") -> InputError:
    return InputError(
        f"one micro-batch of {batch_size}x{seq_len} tokens does not fit in memory{detail}; lower --batch-size "
        f"(raise --grad-accum to keep the tokens per step) or --seq-len"
    )


# What a run folder may hold (besides temporaries): a folder holding only these is a run's, to reuse.
RUN_ENTRIES = frozenset({RUN_FILE, TOKENS_FILE, TOKENS_META, METRICS_FILE, PLOT_FILE, SAMPLES_FILE, "checkpoints",
                         MODEL_DIR})


def check_run_dir(run_dir: Path, data: str | None, resume: bool) -> None:
    """The run folder can take this run: writable, not a model or the corpus, not someone else's files."""
    from ..checkpoints import HF_CONFIG_FILE, MODEL_CONFIG_FILE

    check_folder(run_dir, what="the training run", option="--output", force=True)  # where: writable, names fit
    if resume:
        return
    for marker in (MODEL_CONFIG_FILE, HF_CONFIG_FILE):
        if (run_dir / marker).is_file():
            raise InputError(f"{run_dir} is a model folder (it has {marker}); a run writes its model to "
                             f"{run_dir / MODEL_DIR}; choose a new folder for the run (--output)")
    if data:
        corpus, out = Path(data).expanduser().resolve(), run_dir.expanduser().resolve()
        if corpus.is_dir() and out.is_relative_to(corpus):
            raise InputError(f"{run_dir} is inside the training data {data}: the run's files would become part of "
                             f"the corpus; choose a folder outside it (--output)")
    if (run_dir / RUN_FILE).exists() or checkpoint_paths(run_dir):
        raise InputError(f"{run_dir} already holds a training run; pass --resume to continue it, "
                         f"or choose another output folder")

    def reusable(folder: Path) -> bool:  # a run killed while tokenizing, before its run.json
        return all(p.name in RUN_ENTRIES or ".tmp" in p.name for p in folder.iterdir())

    check_folder(run_dir, what="the training run", option="--output", reusable=reusable)


class _Trainer:
    def __init__(self, config: TrainConfig, model: ModelSpec, resume: bool, device: torch.device,
                 group: distributed.Dist) -> None:
        if config.data:  # absolute, so that a resume from another folder finds the corpus
            config = config.replace(data=str(Path(config.data).expanduser().resolve()))
        self.cfg = config
        self.device = device
        self.group = group
        self.dtype = resolve_dtype(config.dtype, device)
        self.run_dir = Path(config.out_dir)
        self.stop_requested = False
        self.resume = resume
        self._setup_model(model, resume)
        self._setup_data()

    # -- setting up -----------------------------------------------------------------------------
    def _setup_model(self, model: ModelSpec, resume: bool) -> None:
        cfg = self.cfg
        self.state: dict[str, Any] | None = None
        self.init_source: str | None = None
        check_run_dir(self.run_dir, cfg.data, resume)
        if resume:
            if model is not None:
                raise ConfigError("a resumed run continues its own model; pass no model (or --init) with resume")
            run = read_run(self.run_dir)
            self.state = load_latest(self.run_dir)
            if self.state is None:  # killed before its first checkpoint: start it again from its spec
                self.init_source = run.get("init")
                model = self.init_source or GPTConfig.from_dict(run["model"])
        if self.state is not None:
            self.raw = GPT(GPTConfig.from_dict(self.state["model_config"]))
            self.raw.load_state_dict(self.state["model"])
        elif isinstance(model, GPT):
            self.raw = model
        elif isinstance(model, (str, os.PathLike)):
            from ..checkpoints import load_model

            self.init_source = str(model)
            self.raw = load_model(model)
        else:
            torch.manual_seed(cfg.seed)
            self.raw = GPT(model if model is not None else GPTConfig())
        mc = self.raw.config
        vocab = get_tokenizer().n_vocab
        if mc.vocab_size < vocab:
            raise ConfigError(f"vocab_size={mc.vocab_size} is smaller than the GPT-2 tokenizer's {vocab} tokens")
        self.seq_len = cfg.seq_len or mc.block_size
        if self.seq_len > mc.block_size:
            raise ConfigError(f"seq_len={self.seq_len} exceeds the model's context (block_size={mc.block_size})")
        needed = estimate_memory(mc, cfg.batch_size, self.seq_len, self.dtype)
        free = available_memory(self.device)
        if self.device.type == "cpu":
            needed *= int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # CPU processes share one memory
        if free is not None and needed > free:
            raise _memory_error(cfg.batch_size, self.seq_len, f" (needs about {needed / 1e9:.1f} GB, "
                                f"{free / 1e9:.1f} GB available)")

    def _setup_data(self) -> None:
        cfg = self.cfg
        if not cfg.data:
            raise InputError("no training data: pass --data PATH (a text file or a folder of them)")
        error = None
        if self.group.is_main:
            try:
                remove_stale_temporaries(self.run_dir)
                cache_tokens(cfg.data, self.run_dir, same_corpus=self.resume,
                             check=lambda tokens: TokenData(tokens, self.seq_len, cfg.val_fraction, cfg.seed))
            except InputError as exc:
                error = str(exc)
        # Every rank raises the main rank's error instead of waiting forever for it.
        errors = [e for e in self.group.all_gather(error) if e]
        if errors:
            raise InputError(errors[0])
        self.data = TokenData(load_tokens(self.run_dir / TOKENS_FILE), self.seq_len, cfg.val_fraction, cfg.seed)
        has_val = bool(self.data.val.size)
        self.baseline = unigram_loss(self.data.train, self.data.val) if has_val else None
        self.val_entropy = unigram_entropy(self.data.val) if has_val else None
        self.val_digest = _arrays_digest(*self.data.val_windows(cfg.eval_batches * cfg.batch_size)) if has_val else None

    def _write_run_file(self) -> None:
        run = {"format": "gpt2reg-run", "train": self.cfg.to_dict(), "model": self.raw.config.to_dict(),
               "init": self.init_source, "world_size": self.group.world_size, "unigram_val_loss": self.baseline,
               "val_unigram_entropy": self.val_entropy, "val_windows_sha256": self.val_digest}
        path = self.run_dir / RUN_FILE
        if path.exists():
            run["init"] = read_run(self.run_dir).get("init", self.init_source)
        write_json(path, run, what="the run settings", option="--output")

    def _build_step_model(self) -> nn.Module:
        step_model: nn.Module = _WithLoss(self.raw)
        if self.cfg.compile:
            step_model = torch.compile(step_model)
        if self.group.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            step_model = DistributedDataParallel(step_model, device_ids=ids)
        return step_model

    # -- running --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, group, state = self.cfg, self.group, self.state
        self.raw.to(self.device).train()
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left outside autocast
        self.optimizer = make_optimizer(self.raw, cfg.lr, cfg.weight_decay, self.device)
        step, tokens, elapsed = 0, 0, 0.0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            step, tokens, elapsed = state["step"], state["tokens"], state["elapsed"]
            if len(state["rng"]) == group.world_size:
                set_rng_state(state["rng"][group.rank])
            else:
                warnings.warn(f"resumed with {group.world_size} processes, checkpoint had {len(state['rng'])}: "
                              "dropout draws will differ from an uninterrupted run", stacklevel=2)
                torch.manual_seed(cfg.seed + 1000 * group.rank + step)
        else:
            torch.manual_seed(cfg.seed + 1000 * group.rank)  # dropout streams differ across ranks
        self.state = None  # free the checkpoint's copy of the weights
        step_model = self._build_step_model()

        log = None
        if group.is_main:
            self._write_run_file()
            log = MetricsLog(self.run_dir / METRICS_FILE, resume_step=step if self.resume else None)
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and group.is_main))
        tokens_per_step = cfg.batch_size * self.seq_len * cfg.grad_accum * group.world_size
        session_start, session_steps = time.perf_counter(), 0
        # A resumed run that is already at max_steps reports what its log last recorded.
        last: dict[str, Any] = log.records[-1] if log is not None and log.records else {}
        val_loss = next((r["val_loss"] for r in reversed(log.records) if "val_loss" in r), None) if log else None
        diverged = False
        with self._stop_on_signals(bar):
            while step < cfg.max_steps:
                t0 = time.perf_counter()
                loss, grad_norm, stop, batch_digest = self._step(step_model, step)
                step += 1
                session_steps += 1
                tokens += tokens_per_step
                dt = time.perf_counter() - t0
                last = {"step": step, "loss": loss, "lr": lr_at(step - 1, **self._schedule()), "grad_norm": grad_norm,
                        "tokens": tokens, "tokens_per_s": tokens_per_step / dt,
                        "elapsed_s": elapsed + time.perf_counter() - session_start, "batch_sha256": batch_digest}
                if not math.isfinite(loss):  # the same on every rank: the loss is all-reduced
                    diverged = True
                    last.update(loss=None, grad_norm=None, diverged=True)
                    if log is not None:
                        log.write(last)
                    break
                evaluate = step % cfg.eval_interval == 0 or step == cfg.max_steps
                if group.is_main:
                    if evaluate and self.data.val.size:
                        val_loss = last["val_loss"] = self._validation_loss()
                    log.write(last)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{last['tokens_per_s']:,.0f}", refresh=False)
                    if evaluate:
                        self._report(log.records, step, bar)
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or stop:
                    self._checkpoint(step, tokens, elapsed + time.perf_counter() - session_start)
                if stop:
                    break
        bar.close()
        session_time = time.perf_counter() - session_start
        digests = [] if diverged else group.all_gather(_weights_digest(self.raw))
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks hold different weights after training: {digests}")
        model_dir = self.run_dir / MODEL_DIR
        if group.is_main and not diverged:  # nothing worth keeping in non-finite weights
            from ..checkpoints import save_model

            save_model(self.raw, model_dir, force=True)
        group.barrier()
        return {
            "run_dir": str(self.run_dir), "model_dir": None if diverged else str(model_dir), "steps": step,
            "interrupted": step < cfg.max_steps and not diverged, "diverged": diverged, "loss": last.get("loss"),
            "val_loss": val_loss,
            "unigram_val_loss": self.baseline, "val_unigram_entropy": self.val_entropy, "tokens": tokens,
            "elapsed_s": elapsed + session_time, "session_tokens_per_s": session_steps * tokens_per_step / max(session_time, 1e-9),
            "world_size": group.world_size, "weights_sha256": digests,
        }

    def _schedule(self) -> dict[str, Any]:
        c = self.cfg
        return {"lr": c.lr, "min_lr": c.final_lr, "warmup_steps": c.warmup_steps, "max_steps": c.max_steps}

    def _step(self, step_model: nn.Module, step: int) -> tuple[float, float | None, bool, str]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, grad norm, stop?,
        digest of this rank's batches)."""
        cfg, group = self.cfg, self.group
        lr = lr_at(step, **self._schedule())
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        total = torch.zeros((), device=self.device)
        digest = hashlib.sha256()  # of this step's windows, in order: as _arrays_digest of them all
        try:
            for micro in range(cfg.grad_accum):  # made one at a time: never grad_accum batches in memory
                batch = self.data.batch(cfg.batch_size, step, micro, group.rank)
                for array in batch:
                    digest.update(array.tobytes())
                x, y = (torch.from_numpy(a).to(self.device, non_blocking=True) for a in batch)
                last_micro = micro == cfg.grad_accum - 1
                sync = contextlib.nullcontext() if last_micro or not group.enabled else step_model.no_sync()
                with sync:
                    with autocast(self.device, self.dtype):
                        loss = step_model(x, y) / cfg.grad_accum
                    loss.backward()
                total += loss.detach()
        except torch.OutOfMemoryError:
            raise _memory_error(cfg.batch_size, self.seq_len) from None
        except RuntimeError as exc:
            if "allocate" not in str(exc):
                raise
            raise _memory_error(cfg.batch_size, self.seq_len) from None
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = float(nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # One collective for both: the mean loss over ranks, and whether any rank was asked to stop.
        flags = group.sum(torch.stack([total.float(), torch.tensor(float(self.stop_requested), device=self.device)]))
        return flags[0].item() / group.world_size, grad_norm, bool(flags[1].item()), digest.hexdigest()[:16]

    @torch.no_grad()
    def _validation_loss(self) -> float:
        """Mean loss over the same validation windows every time (comparable across evaluations)."""
        model, b = self.raw, self.cfg.batch_size
        model.eval()
        inputs, targets = self.data.val_windows(self.cfg.eval_batches * b)
        total = 0.0
        for i in range(0, len(inputs), b):
            x = torch.from_numpy(inputs[i : i + b]).to(self.device)
            y = torch.from_numpy(targets[i : i + b]).to(self.device)
            with autocast(self.device, self.dtype):
                total += model.loss(x, y).item() * len(x)
        model.train()
        return total / len(inputs)

    def _report(self, records: list[dict[str, Any]], step: int, bar) -> None:
        """At each evaluation: redraw the loss plot and write a sample."""
        plot_losses(records, self.run_dir / PLOT_FILE, baseline=self.baseline, title=self.run_dir.name)
        if self.cfg.sample_tokens:
            text = sample_text(self.raw, self.cfg.sample_prompt, self.cfg.sample_tokens, seed=self.cfg.seed + step)
            append_text(self.run_dir / SAMPLES_FILE, f"--- step {step} ---\n{text}\n\n", what="the samples",
                        option="--output")
            val = records[-1].get("val_loss")
            header = f"step {step}" + (f"  val loss {val:.3f}" if val is not None else "")
            bar.write(f"{header}  sample: {text.strip()[:200]!r}", file=sys.stderr)

    def _checkpoint(self, step: int, tokens: int, elapsed: float) -> None:
        rngs = self.group.all_gather(rng_state())  # every rank's dropout stream, for an exact resume
        if self.group.is_main:
            save_checkpoint(self.run_dir, {
                "step": step, "tokens": tokens, "elapsed": elapsed, "world_size": self.group.world_size,
                "model_config": self.raw.config.to_dict(), "train_config": self.cfg.to_dict(),
                "model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rngs,
            }, keep=self.cfg.keep_checkpoints)

    @contextlib.contextmanager
    def _stop_on_signals(self, bar):
        """Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint and returns; twice aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            if self.group.is_main:
                bar.write("stopping: saving a checkpoint after this step (Ctrl-C again to abort)", file=sys.stderr)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


__all__ = ["TrainConfig", "train", "resume_config", "resume_conflicts", "read_run", "estimate_memory"]
