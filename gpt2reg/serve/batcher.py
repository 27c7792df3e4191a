"""The continuous-batching scheduler: one thread owns the model and decodes every running request together.

Each loop turn is one step boundary: requests that were cancelled (their client went away) leave,
waiting requests join while ``max_batch`` rows allow (their prompts prefilled together, their cache
aligned with the others' by the engine), every row samples its next token, finished rows leave, and the rest
take one decode step together. A request beyond the batch waits in a queue of ``max_queue``;
``submit`` refuses more with ``QueueFull`` (the server's 429).

A job that ``echo``es its prompts with ``logprobs`` gets their tokens' log-probabilities first, from one
full forward pass per prompt (``Engine.prompt_logits``) on this thread; a job with ``max_tokens`` 0
ends there and never takes a row.

Sampling is ``gpt2reg.generation``'s: each row has its own ``Sampler`` seeded ``(seed, sample index)``
and its own ``Continuation``, exactly as ``decode`` gives each sequence, so a request gets the tokens
it would get alone with its seed, whoever else is in the batch.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..decoding import Engine
from ..generation import NON_FINITE, Continuation, GenerationOptions, Sampler, sampling_vocab

log = logging.getLogger("gpt2reg.serve")


class QueueFull(Exception):
    """The batch and its waiting queue are full."""


class Closed(Exception):
    """The batcher is shutting down and takes no more requests."""


@dataclass
class TokenEvent:
    """One sampled token of one choice (``index`` = prompt index * n + sample index)."""

    index: int
    token: int
    text: str  # text that became final with this token (may be empty; all the rest when it ends)
    finish_reason: str | None = None  # "eos", "stop" or "length" on the choice's last token
    logprob: float | None = None  # the chosen token's, under the model's (unfiltered) distribution
    top_logprobs: dict[int, float] | None = None  # the most likely tokens' when asked for


@dataclass
class PromptEvent:
    """One choice's echoed prompt (``echo``): its tokens' log-probabilities when asked for.

    Entry 0 of ``logprobs`` and ``top_logprobs`` is None: nothing precedes the first token.
    """

    index: int
    logprobs: list[float | None] | None = None
    top_logprobs: list[dict[int, float] | None] | None = None
    finish_reason: str | None = None  # "length" when max_tokens is 0: nothing follows


@dataclass
class Failure:
    """The request could not be decoded (the server stays up; this request gets a 500)."""

    message: str


Deliver = Callable[[list[TokenEvent] | list[PromptEvent] | Failure], None]


@dataclass(eq=False)  # identity: two equal requests are still two jobs
class Job:
    """One completion request as the batcher sees it: validated, encoded, with a way to hand back tokens.

    ``deliver`` is called from the decode thread, once per step with that step's events.
    """

    prompts: list[list[int]]
    options: GenerationOptions  # its seed set: the server draws one for a request without
    deliver: Deliver
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    echo: bool = False  # the prompts come back first (PromptEvent), with log-probabilities when asked for
    cancelled: bool = False

    @property
    def rows(self) -> int:
        """Rows it takes in the batch: none for the prompt alone (``max_new_tokens`` 0)."""
        return len(self.prompts) * self.options.num_samples if self.options.max_new_tokens else 0


@dataclass
class _Row:
    job: Job
    index: int
    sampler: Sampler
    sequence: Continuation


@dataclass
class BatchStats:
    """What the batch does, for ``/health``: rows now, the most ever held at once, waiting requests, totals."""

    batch: int = 0
    max_batch_seen: int = 0
    queued: int = 0
    requests: int = 0
    rejected: int = 0
    tokens: int = 0
    steps: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# Rows one lane takes before a second lane gets any. 124M int8 on the 2-core AMD EPYC, 16 streaming
# clients: one lane of 16 made 842-940 tokens/s at 1.8-2.0 ms of CPU per token, two lanes of 8
# 819-862 at 2.2-2.3 (each streams the weights); at 32 clients two lanes of 16 matched one of 32
# and, with requests coming and going, beat it (799-823 against 712-769: one prefill stalls half).
LANE_ROWS = 16


class Batcher:
    """Runs each engine on its own daemon thread (a lane); ``submit`` jobs, ``cancel`` them, ``close`` at shutdown.

    Lanes decode separate rows over one model (engines on one session): while one lane samples,
    hands out its tokens or prefills a joining prompt, the other's model call keeps the cores busy. A
    job joins lane 0 while that keeps it at ``lane_rows`` rows or fewer, else the lane with the fewest
    rows: every step of a lane streams all the weights from memory, so up to ``LANE_ROWS`` rows are
    cheapest as one batch (docs/serving.md).
    """

    def __init__(self, engine: Engine | Sequence[Engine], *, max_batch: int, max_queue: int,
                 lane_rows: int = LANE_ROWS) -> None:
        self.engines = list(engine) if isinstance(engine, Sequence) else [engine]
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.lane_rows = lane_rows
        self.stats = BatchStats()
        self._vocab = sampling_vocab(self.engines[0].vocab_size)
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._rows = [0] * len(self.engines)  # each lane's rows, as of its last step boundary
        self._threads = [threading.Thread(target=self._run, args=(lane,), name=f"gpt2reg-decode-{lane}", daemon=True)
                         for lane in range(len(self.engines))]
        for thread in self._threads:
            thread.start()

    @property
    def _running_rows(self) -> int:
        return sum(self._rows)

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises ``QueueFull`` or ``Closed`` instead when it cannot be taken."""
        if job.rows > self.max_batch:
            raise ValueError(f"a job of {job.rows} rows never fits a batch of {self.max_batch}")
        with self._cond:
            if self._closed:
                raise Closed()
            if self._waiting_beyond_batch(job) > self.max_queue:
                self.stats.rejected += 1
                raise QueueFull()
            self._waiting.append(job)
            self.stats.queued = len(self._waiting)
            self.stats.requests += 1
            self._cond.notify_all()

    def _waiting_beyond_batch(self, job: Job) -> int:
        """How many waiting jobs, ``job`` last, would not join at the next step (lock held)."""
        free = self.max_batch - self._running_rows
        beyond = 0
        for waiting in (*self._waiting, job):
            if beyond == 0 and waiting.rows <= free:  # first come first served: none overtakes
                free -= waiting.rows
            else:
                beyond += 1
        return beyond

    def cancel(self, job: Job) -> None:
        """Stop decoding ``job``: its rows leave at the next step boundary and it gets nothing more."""
        with self._cond:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                self.stats.queued = len(self._waiting)

    def close(self, timeout: float | None = 5.0) -> None:
        """Take no more jobs, drop the running ones, and end the decode thread."""
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.cancelled = True
            self._waiting.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # -- the decode thread ----------------------------------------------------------------------

    def _run(self, lane: int) -> None:
        engine = self.engines[lane]
        rows: list[_Row] = []
        logits = np.zeros((0, engine.vocab_size), dtype=np.float32)
        while True:
            with self._cond:
                while not rows and not self._next_is_for(lane) and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for row in rows:
                        row.job.cancelled = True
                    return
                self._rows[lane] = len(rows)
                joining = self._take_waiting(lane)
            rows, logits = self._drop(engine, rows, logits, [i for i, r in enumerate(rows) if not r.job.cancelled])
            joining = [job for job in joining if not job.echo or self._echo(engine, job)]
            if joining:
                rows, logits = self._join(engine, joining, rows, logits)
            self._set_rows(lane, len(rows))
            if not rows:
                continue
            tokens = self._sample(rows, logits)
            running = [i for i, r in enumerate(rows) if not r.sequence.done]
            rows, logits = self._drop(engine, rows, logits, running)
            tokens = [tokens[i] for i in running]
            self._set_rows(lane, len(rows))
            if not rows:
                continue
            try:
                logits = engine.step(tokens)
                with self._cond:
                    self.stats.steps += 1
            except Exception as exc:  # every running request fails; the server stays up
                log.exception("decode step failed")
                for job in {id(r.job): r.job for r in rows}.values():
                    _deliver(job, Failure(f"decode step failed: {exc}"))
                rows, logits = self._drop(engine, rows, logits, [])
                self._set_rows(lane, 0)

    def _set_rows(self, lane: int, count: int) -> None:
        with self._cond:
            self._rows[lane] = count
            self.stats.batch = self._running_rows
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, self.stats.batch)
            if self._waiting:
                self._cond.notify_all()  # rows left: a waiting job may fit now, maybe in another lane

    def _lane_for(self, job: Job) -> int:
        """The lane a job joins (lock held): lane 0 while it keeps ``lane_rows`` or fewer, else the emptiest."""
        if self._rows[0] + job.rows <= self.lane_rows:
            return 0
        return min(range(len(self._rows)), key=lambda lane: self._rows[lane])

    def _next_is_for(self, lane: int) -> bool:
        """Whether the first waiting job fits now and joins ``lane`` (lock held)."""
        return bool(self._waiting) and self._waiting[0].rows <= self.max_batch - self._running_rows \
            and self._lane_for(self._waiting[0]) == lane

    def _join(self, engine: Engine, jobs: list[Job], rows: list[_Row], logits: np.ndarray
              ) -> tuple[list[_Row], np.ndarray]:
        """Prefill the joining jobs' prompts together and append their rows (all fail together, the batch goes on)."""
        try:
            new = engine.add([p for job in jobs for p in job.prompts], [job.options.num_samples for job in jobs for _ in job.prompts])
        except Exception as exc:
            log.exception("prefill failed")
            for job in jobs:
                _deliver(job, Failure(f"prefill failed: {exc}"))
            return rows, logits
        for job in jobs:
            o = job.options
            rows = rows + [_Row(job, i, Sampler(o, [i % o.num_samples], o.seed),
                                Continuation(o.max_new_tokens, o.stop, o.eos_token_id)) for i in range(job.rows)]
        logits = np.concatenate((logits, new))
        broken = {id(r.job): r.job for r, finite in zip(rows, np.isfinite(logits).all(axis=1), strict=True) if not finite}
        for job in broken.values():  # NaN weights, or float16 overflow: nothing sensible to sample
            _deliver(job, Failure(NON_FINITE))
        return self._drop(engine, rows, logits, [i for i, r in enumerate(rows) if id(r.job) not in broken])

    def _echo(self, engine: Engine, job: Job) -> bool:
        """Hand ``job`` its prompts (log-probabilities from a full pass where asked); whether it goes on to decode."""
        events = []
        try:
            for p, prompt in enumerate(job.prompts):
                logprobs = tops = None
                if job.logprobs is not None:
                    logits = engine.prompt_logits(prompt)[:, : self._vocab]
                    if not np.isfinite(logits).all():
                        raise ValueError(NON_FINITE)
                    logprobs, tops = prompt_logprobs(logits, prompt, job.logprobs)
                finish = None if job.options.max_new_tokens else "length"
                n = job.options.num_samples
                events += [PromptEvent(p * n + i, logprobs, tops, finish) for i in range(n)]
        except Exception as exc:
            log.warning("scoring a prompt failed: %s", exc)
            _deliver(job, Failure(f"scoring the prompt failed: {exc}"))
            return False
        _deliver(job, events)
        return job.options.max_new_tokens > 0 and not job.cancelled

    def _take_waiting(self, lane: int) -> list[Job]:
        """Pop the waiting jobs that join ``lane``, first come first served, while their rows fit (lock held)."""
        joining = []
        while self._next_is_for(lane):
            job = self._waiting.popleft()
            joining.append(job)
            self._rows[lane] += job.rows
        self.stats.queued = len(self._waiting)
        if self._waiting:
            self._cond.notify_all()  # the next one may be another lane's
        return joining

    @staticmethod
    def _drop(engine: Engine, rows: list[_Row], logits: np.ndarray, keep: list[int]) -> tuple[list[_Row], np.ndarray]:
        if len(keep) == len(rows):
            return rows, logits
        engine.keep(keep)
        return [rows[i] for i in keep], logits[keep]

    def _sample(self, rows: list[_Row], logits: np.ndarray) -> list[int]:
        """Each row's next token from its own sampler; every job gets its events for this step."""
        tokens = []
        events: dict[int, tuple[Job, list[TokenEvent]]] = {}
        for row, row_logits in zip(rows, logits[:, : self._vocab], strict=True):
            token = row.sampler(row_logits[None])[0]
            tokens.append(token)
            text = row.sequence.push(token)
            event = TokenEvent(row.index, token, text, row.sequence.reason)
            if row.job.logprobs is not None:
                event.logprob, event.top_logprobs = token_logprobs(row_logits, token, row.job.logprobs)
            events.setdefault(id(row.job), (row.job, []))[1].append(event)
        with self._cond:
            self.stats.tokens += len(tokens)
        for job, job_events in events.values():
            _deliver(job, job_events)
        return tokens


def _deliver(job: Job, events: list[TokenEvent] | Failure) -> None:
    """Hand ``events`` to the request; one that cannot take them any more (its event loop closed at
    shutdown) is cancelled rather than allowed to stop the decode thread."""
    try:
        job.deliver(events)
    except Exception:
        log.warning("a request could not take its tokens any more; dropping it")
        job.cancelled = True


def token_logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, dict[int, float] | None]:
    """The log-probability of ``token`` under softmax(``logits``), and the ``top`` most likely tokens' and
    ``token``'s (as the OpenAI API gives them: up to ``top`` + 1), most likely first; None when ``top`` is 0."""
    logprobs, tops = prompt_logprobs(logits[None], [0, token], top)
    return logprobs[1], tops[1]


PROMPT_ROWS = 64  # positions whose float64 log-softmax is held at once (64 x 50257 x 8 bytes: 26 MB)


def prompt_logprobs(logits: np.ndarray, tokens: list[int], top: int
                    ) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """Each of ``tokens``' log-probability under the logits (len(tokens), vocab) of the positions before it,
    and the tops as ``token_logprobs`` gives them; entry 0 is None for both (nothing precedes the first).

    Computed in float64, a block of positions at a time, as ``gpt2reg eval`` computes its losses.
    """
    logprobs: list[float | None] = [None]
    tops: list[dict[int, float] | None] = [None]
    for start in range(0, len(tokens) - 1, PROMPT_ROWS):
        scores = logits[start : min(start + PROMPT_ROWS, len(tokens) - 1)].astype(np.float64)
        peak = scores.max(axis=1, keepdims=True)
        scores -= peak + np.log(np.exp(scores - peak).sum(axis=1, keepdims=True))
        chosen = np.asarray(tokens[start + 1 : start + 1 + len(scores)])
        logprobs += scores[np.arange(len(scores)), chosen].tolist()
        if top <= 0:
            tops += [None] * len(scores)
            continue
        best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        for row, token, candidates in zip(scores, chosen.tolist(), best, strict=True):
            ranked = sorted({*candidates.tolist(), token}, key=lambda t: -row[t])
            tops.append({t: float(row[t]) for t in ranked})
    return logprobs, tops
