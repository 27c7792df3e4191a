"""The HTTP side: Starlette routes speaking the OpenAI completions API over one ``Batcher``.

The model loads on a thread after the server starts, so ``/health`` answers 503 ("loading") at once
and 200 when requests can be served. Each completion request becomes a ``Job``; the decode thread
hands its tokens back through ``loop.call_soon_threadsafe`` into the request's own queue. A client
that goes away (a closed stream, or a dropped connection while waiting for a whole response) cancels
its job, so its rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..tokenizer import get_tokenizer
from .batcher import Batcher, Closed, Failure, Job, QueueFull, TokenEvent
from .engine import BatchEngine
from .protocol import (
    FINISH_REASONS,
    APIError,
    CompletionRequest,
    Limits,
    completion_body,
    logprobs_body,
    parse_completion,
    token_text,
    usage_body,
)

log = logging.getLogger("gpt2reg.serve")

MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass
class LoadedModel:
    """What a loader returns: the batch engine and how to describe it."""

    engine: BatchEngine
    backend: str  # e.g. "onnxruntime CPUExecutionProvider", "torch cpu"
    eos_token_id: int | None


@dataclass(frozen=True)
class ServerOptions:
    max_batch: int = 16
    max_queue: int = 64
    max_tokens: int | None = None  # None: up to the context
    api_key: str | None = None


def create_app(load: Callable[[], LoadedModel], model_id: str, options: ServerOptions,
               on_fatal: Callable[[str], None] = lambda message: None) -> Starlette:
    """The ASGI app serving ``load()``'s model as ``model_id``; ``on_fatal(message)`` if loading fails."""
    return _Server(load, model_id, options, on_fatal).app


class _Server:
    def __init__(self, load: Callable[[], LoadedModel], model_id: str, options: ServerOptions,
                 on_fatal: Callable[[str], None]) -> None:
        self.model_id = model_id
        self.options = options
        self.created = int(time.time())
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.limits: Limits | None = None
        self.error: str | None = None
        self.page = (resources.files(__package__) / "page.html").read_text(encoding="utf-8")
        self._load, self._on_fatal = load, on_fatal
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]
        handlers = {APIError: self._api_error, HTTPException: self._http_error, Exception: self._internal_error}
        self.app = Starlette(routes=routes, exception_handlers=handlers, lifespan=self._lifespan)

    # -- life cycle -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=self._load_model, name="gpt2reg-load", daemon=True).start()
        yield
        if self.batcher is not None:
            self.batcher.close()

    def _load_model(self) -> None:
        try:
            model = self._load()
            block = model.engine.block_size
            max_tokens = min(self.options.max_tokens or block - 1, block - 1)
            self.limits = Limits(self.model_id, model.engine.vocab_size, block, max_tokens, self.options.max_batch)
            self.batcher = Batcher(model.engine, max_batch=self.options.max_batch, max_queue=self.options.max_queue)
            get_tokenizer()
            self.model = model
            log.info("ready: %s on %s (max batch %d)", self.model_id, model.backend, self.options.max_batch)
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__
            self._on_fatal(self.error)

    # -- routes ---------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def health(self, request: Request) -> Response:
        if self.error is not None:
            return JSONResponse({"status": "error", "model": self.model_id, "error": self.error}, status_code=503)
        if self.model is None or self.batcher is None:
            return JSONResponse({"status": "loading", "model": self.model_id}, status_code=503)
        return JSONResponse({
            "status": "ok", "model": self.model_id, "backend": self.model.backend,
            "context": self.limits.block_size, "max_tokens": self.limits.max_tokens,
            "max_batch": self.options.max_batch, "max_queue": self.options.max_queue,
            "batch": self.batcher.stats.to_dict(),
        })

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        card = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "gpt2reg"}
        if self.limits is not None:
            card["context_length"] = self.limits.block_size
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        if self.batcher is None or self.limits is None or self.model is None:
            raise APIError(503, "the model is still loading; retry when GET /health says ok")
        req = parse_completion(_parse_json(await _read_body(request)), self.limits)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        seed = req.seed if req.seed is not None else int(np.random.SeedSequence().entropy)
        job = Job(req.prompts, req.max_tokens, req.options, seed,
                  lambda events: loop.call_soon_threadsafe(queue.put_nowait, events),
                  n=req.n, stop=req.stop, logprobs=req.logprobs, eos_token_id=self.model.eos_token_id)
        try:
            self.batcher.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy ({self.options.max_batch} sequences decoding, "
                                f"{self.options.max_queue} requests waiting); retry shortly", code="queue_full") from None
        except Closed:
            raise APIError(503, "the server is shutting down") from None
        reply = _Reply(req, self.model_id)
        if req.stream:
            return StreamingResponse(self._stream(job, queue, reply), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._complete(request, job, queue, reply)

    async def _stream(self, job: Job, queue: asyncio.Queue, reply: _Reply) -> AsyncIterator[str]:
        # Cancelled (the client went away) or finished, the job leaves the batch in ``finally``.
        try:
            while not reply.done:
                events = await queue.get()
                if isinstance(events, Failure):
                    yield _sse(APIError(500, events.message).body())
                    break
                chunks = [reply.chunk([choice]) for choice in (reply.add(e) for e in events) if choice is not None]
                if chunks:
                    if reply.done:
                        chunks[-1]["usage"] = reply.usage()
                    yield "".join(_sse(c) for c in chunks)
            if reply.done and reply.request.include_usage:
                yield _sse(reply.chunk([]) | {"usage": reply.usage()})
            yield "data: [DONE]\n\n"
        finally:
            self.batcher.cancel(job)

    async def _complete(self, request: Request, job: Job, queue: asyncio.Queue, reply: _Reply) -> Response:
        gone = object()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            queue.put_nowait(gone)

        watcher = asyncio.create_task(watch())
        try:
            while not reply.done:
                events = await queue.get()
                if events is gone:
                    return Response(status_code=499)  # nobody is listening
                if isinstance(events, Failure):
                    raise APIError(500, events.message)
                for event in events:
                    reply.add(event)
            return JSONResponse(reply.body())
        finally:
            watcher.cancel()
            self.batcher.cancel(job)

    # -- checks and errors ----------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        key = self.options.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "incorrect API key", code="invalid_api_key")

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code,
                            headers=exc.headers)

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}").body(), status_code=500)


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is {length} bytes; at most {MAX_BODY_BYTES}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is more than {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(400, f"malformed JSON in the request body: {exc}") from None


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Reply:
    """One request's answer as its tokens arrive: text, tokens and log-probabilities per choice."""

    def __init__(self, request: CompletionRequest, model_id: str) -> None:
        self.request = request
        self.model_id = model_id
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        rows = len(request.prompts) * request.n
        self.texts = [""] * rows
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.logprobs: list[list[float]] = [[] for _ in range(rows)]
        self.tops: list[list[dict[int, float] | None]] = [[] for _ in range(rows)]
        self.finish: list[str | None] = [None] * rows
        self.offsets = [len(get_tokenizer().decode(p)) for p in request.prompts for _ in range(request.n)]
        self.unfinished = rows

    @property
    def done(self) -> bool:
        return self.unfinished == 0

    def add(self, event: TokenEvent) -> dict[str, Any] | None:
        """Record ``event``; the streamed choice it makes (None when it adds nothing to show)."""
        i = event.index
        self.texts[i] += event.text
        self.tokens[i].append(event.token)
        logprobs = None
        if event.logprob is not None:
            self.logprobs[i].append(event.logprob)
            self.tops[i].append(event.top_logprobs)
            logprobs = logprobs_body([event.token], [event.logprob], [event.top_logprobs], self.offsets[i])
            self.offsets[i] += len(token_text(event.token))
        finish = FINISH_REASONS[event.finish_reason] if event.finish_reason else None
        if finish is not None:
            self.finish[i] = finish
            self.unfinished -= 1
        if not event.text and finish is None and logprobs is None:
            return None
        return {"text": event.text, "index": i, "logprobs": logprobs, "finish_reason": finish}

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return completion_body(self.id, self.created, self.model_id, choices, None)

    def usage(self) -> dict[str, int]:
        return usage_body(sum(len(p) for p in self.request.prompts), sum(len(t) for t in self.tokens))

    def body(self) -> dict[str, Any]:
        choices = []
        for i, text in enumerate(self.texts):
            logprobs = None
            if self.request.logprobs is not None:
                start = self.offsets[i] - sum(len(token_text(t)) for t in self.tokens[i])
                logprobs = logprobs_body(self.tokens[i], self.logprobs[i], self.tops[i], start)
            choices.append({"text": text, "index": i, "logprobs": logprobs, "finish_reason": self.finish[i]})
        return completion_body(self.id, self.created, self.model_id, choices, self.usage())
