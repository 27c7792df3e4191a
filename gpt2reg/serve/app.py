"""The HTTP side: Starlette routes speaking the OpenAI completions and chat APIs over one ``Batcher``.

The model loads on a thread after the server starts, so ``/health`` answers 503 ("loading") at once
and 200 when requests can be served. Each completion request becomes a ``Job``; the decode thread
hands its tokens back through the ``Mailbox`` (one loop wake-up per step) into the request's own queue. A client
that goes away (a closed stream, or a dropped connection while waiting for a whole response) cancels
its job, so its rows leave the batch at the next step.

At the edges: a POST body must say ``Content-Type: application/json`` (so a browser's cross-origin
"simple" request, text/plain or a form, is refused before it does anything), arrive within
``read_timeout`` seconds, stay under ``MAX_BODY_BYTES`` and nest at most ``MAX_JSON_DEPTH`` deep; a
large body is parsed and tokenized on a worker thread, not on the event loop. API keys compare as
UTF-8 bytes in constant time. ``allowed_hosts`` (the Host header) and ``cors_origins`` are off unless
given. A client that goes away mid-request is one log line.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..decoding import Engine
from ..errors import InputError
from ..tokenizer import EOT_TOKEN, get_tokenizer
from .batcher import Batcher, Closed, Failure, Job, PromptEvent, QueueFull, TokenEvent
from .chat import PLAIN_TEMPLATE, ChatTemplate, chat_body, chat_logprobs, chat_messages, parse_chat
from .protocol import (
    FINISH_REASONS,
    APIError,
    CompletionRequest,
    Limits,
    check_model,
    check_object,
    completion_body,
    encode_text,
    get_field,
    json_type,
    logprobs_body,
    parse_completion,
    token_text,
    usage_body,
)

log = logging.getLogger("gpt2reg.serve")

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 64  # an OpenAI request nests 5 deep at most; json.loads would recurse to a RecursionError
OFF_LOOP_BYTES = 64 * 1024  # bodies from this size are parsed and tokenized on a worker thread


@dataclass
class LoadedModel:
    """What a loader returns: the batch engine and how to describe it."""

    engine: Engine
    backend: str  # e.g. "onnxruntime CPUExecutionProvider", "torch cpu"
    eos_token_id: int | None
    lanes: tuple[Engine, ...] = ()  # more engines over the same model, decoded on threads of their own


@dataclass(frozen=True)
class ServerOptions:
    max_batch: int = 16
    max_queue: int = 64
    max_tokens: int | None = None  # None: up to the context
    api_key: str | None = None
    chat_template: ChatTemplate = ChatTemplate(PLAIN_TEMPLATE, "plain")
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (browsers' CORS); none by default
    allowed_hosts: tuple[str, ...] = ()  # Host header names served (DNS rebinding); any by default
    read_timeout: float = 30.0  # seconds a client may take to send a request's body


def create_app(load: Callable[[], LoadedModel], model_names: str | Sequence[str], options: ServerOptions,
               on_fatal: Callable[[str], None] = lambda message: None) -> Starlette:
    """The ASGI app serving ``load()``'s model under ``model_names`` (the first is the one responses give);
    ``on_fatal(message)`` if loading fails."""
    names = (model_names,) if isinstance(model_names, str) else tuple(model_names)
    return _Server(load, names, options, on_fatal).app


class _ClientGone(Exception):
    """The client went away before its request was read; nobody is left to answer."""


class Mailbox:
    """Hands items from decode threads to asyncio queues on the event loop, one wake-up for all the items
    posted before the loop gets to them: a step's tokens for 16 requests wake it once, not 16 times (each
    wake-up is a write to the loop's self-pipe in the decode thread and a pass of the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, Any]] = []

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        """Put ``item`` on ``queue`` soon, from any thread; raises RuntimeError once the loop is closed."""
        with self._lock:
            self._pending.append((queue, item))
            if len(self._pending) > 1:
                return  # the wake-up already asked for delivers this one too
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:
                self._pending.clear()  # nobody will deliver them: each poster hears it
                raise

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, item in pending:
            queue.put_nowait(item)


class _Server:
    def __init__(self, load: Callable[[], LoadedModel], model_names: tuple[str, ...], options: ServerOptions,
                 on_fatal: Callable[[str], None]) -> None:
        self.model_names = model_names
        self.model_id = model_names[0]
        self.options = options
        self.created = int(time.time())
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.limits: Limits | None = None
        self.error: str | None = None
        self.page = (resources.files(__package__) / "page.html").read_text(encoding="utf-8")
        self._load, self._on_fatal = load, on_fatal
        self._loader = threading.Thread(target=self._load_model, name="gpt2reg-load", daemon=True)
        self._stopping = False
        self._mailbox: Mailbox | None = None  # made on the event loop, at startup
        self._parser = ThreadPoolExecutor(2, thread_name_prefix="gpt2reg-parse")
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model_card, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/tokenizer_info", self.tokenizer_info, methods=["GET"]),
        ]
        middleware = []
        if options.allowed_hosts:
            middleware.append(Middleware(_HostCheck, allowed=options.allowed_hosts))
        if options.cors_origins:
            middleware.append(Middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                                         allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
        handlers = {APIError: self._api_error, HTTPException: self._http_error, _ClientGone: self._client_gone,
                    Exception: self._internal_error}
        self.app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers,
                             lifespan=self._lifespan)

    # -- life cycle -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._mailbox = Mailbox(asyncio.get_running_loop())
        self._loader.start()
        yield
        # A load still under way is waited for: leaving while a native library initialises aborts the process.
        self._stopping = True
        await asyncio.to_thread(self._loader.join)
        if self.batcher is not None:
            self.batcher.close()
        self._parser.shutdown(wait=False, cancel_futures=True)

    def _load_model(self) -> None:
        try:
            model = self._load()
            if self._stopping:
                return
            block = model.engine.block_size
            if (self.options.max_tokens or 0) > block - 1:  # refused, not quietly lowered
                raise InputError(f"--max-tokens {self.options.max_tokens} is more than {self.model_id}'s context of "
                                 f"{block} tokens allows ({block - 1}, leaving one for the prompt); lower it or "
                                 "leave it out")
            max_tokens = self.options.max_tokens or block - 1
            self.limits = Limits(self.model_names, model.engine.vocab_size, block, max_tokens, self.options.max_batch)
            self.batcher = Batcher([model.engine, *model.lanes], max_batch=self.options.max_batch, max_queue=self.options.max_queue)
            get_tokenizer()
            self.model = model
            log.info("ready: %s on %s (max batch %d, %d lane(s))", self.model_id, model.backend, self.options.max_batch,
                     len(self.batcher.engines))
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__
            self._on_fatal(self.error)

    def _ready(self) -> tuple[Batcher, Limits, LoadedModel]:
        if self.batcher is None or self.limits is None or self.model is None:
            raise APIError(503, "the model is still loading; retry when GET /health says ok")
        return self.batcher, self.limits, self.model

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
            "lanes": len(self.batcher.engines), "batch": self.batcher.stats.to_dict(), "memory": _memory(),
        })

    def _card(self, name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "gpt2reg"}
        if self.limits is not None:
            card["context_length"] = card["max_model_len"] = self.limits.block_size
        return card

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._card(name) for name in self.model_names]})

    async def model_card(self, request: Request) -> Response:
        self._authorize(request)
        name = request.path_params["model"]
        if name not in self.model_names:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.model_id}'",
                           param="model", code="model_not_found")
        return JSONResponse(self._card(name))

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        batcher, limits, model = self._ready()
        return await self._generate(request, batcher, model, lambda body: _CompletionReply(
            parse_completion(body, limits), self.model_id))

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        batcher, limits, model = self._ready()
        return await self._generate(request, batcher, model, lambda body: _ChatReply(
            parse_chat(body, limits, self.options.chat_template), self.model_id))

    async def _generate(self, request: Request, batcher: Batcher, model: LoadedModel,
                        prepare: Callable[[Any], _Reply]) -> Response:
        reply = await self._parse(request, prepare)
        req = reply.request
        queue: asyncio.Queue[Any] = asyncio.Queue()
        seed = req.options.seed if req.options.seed is not None else int(np.random.SeedSequence().entropy)
        mailbox = self._mailbox
        job = Job(req.prompts, replace(req.options, seed=seed, eos_token_id=model.eos_token_id),
                  lambda events: mailbox.post(queue, events),
                  logprobs=req.logprobs, echo=req.echo)
        try:
            batcher.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy ({self.options.max_batch} sequences decoding, "
                                f"{self.options.max_queue} requests waiting); retry shortly", code="queue_full") from None
        except Closed:
            raise APIError(503, "the server is shutting down") from None
        if req.stream:
            return StreamingResponse(self._stream(batcher, job, queue, reply), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._complete(request, batcher, job, queue, reply)

    async def _stream(self, batcher: Batcher, job: Job, queue: asyncio.Queue, reply: _Reply) -> AsyncIterator[str]:
        # Cancelled (the client went away) or finished, the job leaves the batch in ``finally``.
        try:
            opening = reply.opening()
            if opening:
                yield "".join(_sse(c) for c in opening)
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
            batcher.cancel(job)

    async def _complete(self, request: Request, batcher: Batcher, job: Job, queue: asyncio.Queue,
                        reply: _Reply) -> Response:
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
            batcher.cancel(job)

    async def tokenize(self, request: Request) -> Response:
        """vLLM's ``POST /tokenize``: ``{"prompt": text}`` or ``{"messages": [...]}`` (through the chat template)."""
        self._authorize(request)
        _, limits, _ = self._ready()

        def run(body: Any) -> dict[str, Any]:
            body = check_object(body)
            check_model(body, limits)
            if body.get("messages") is not None:
                if get_field(body, "add_generation_prompt", (bool,), "a boolean") is False:
                    raise APIError(400, "'add_generation_prompt': false is not supported", param="add_generation_prompt")
                text = self.options.chat_template.render(chat_messages(body))
            else:
                text = body.get("prompt")
                if not isinstance(text, str):
                    raise APIError(400, f"'prompt' must be a string, not {json_type(text)}", param="prompt")
            ids = encode_text(text, limits.vocab_size, "prompt") if text else []
            strs = get_field(body, "return_token_strs", (bool,), "a boolean")
            return {"count": len(ids), "max_model_len": limits.block_size, "tokens": ids,
                    "token_strs": [token_text(t) for t in ids] if strs else None}

        return JSONResponse(await self._parse(request, run))

    async def detokenize(self, request: Request) -> Response:
        """vLLM's ``POST /detokenize``: ``{"tokens": [ids]}`` -> ``{"prompt": text}``."""
        self._authorize(request)
        _, limits, _ = self._ready()

        def run(body: Any) -> dict[str, Any]:
            body = check_object(body)
            check_model(body, limits)
            ids = body.get("tokens")
            if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise APIError(400, "'tokens' must be an array of token ids", param="tokens")
            bad = [t for t in ids if not 0 <= t < min(limits.vocab_size, get_tokenizer().n_vocab)]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary", param="tokens")
            return {"prompt": get_tokenizer().decode(ids)}

        return JSONResponse(await self._parse(request, run))

    async def tokenizer_info(self, request: Request) -> Response:
        """vLLM's ``GET /tokenizer_info``: what lm-evaluation-harness's remote tokenizer reads."""
        self._authorize(request)
        _, limits, _ = self._ready()
        return JSONResponse({
            "tokenizer_class": "GPT2Tokenizer", "bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN,
            "unk_token": EOT_TOKEN, "pad_token": None, "add_bos_token": False, "add_prefix_space": False,
            "model_max_length": limits.block_size, "chat_template": self.options.chat_template.text,
        })

    # -- reading requests -----------------------------------------------------------------------

    async def _parse(self, request: Request, parse: Callable[[Any], Any]) -> Any:
        """``parse(json body)``, on a worker thread for a large body (tokenizing it would stall the event loop)."""
        body = await self._read_body(request)

        def run() -> Any:
            return parse(_parse_json(body))

        if len(body) < OFF_LOOP_BYTES:
            return run()
        return await asyncio.get_running_loop().run_in_executor(self._parser, run)

    async def _read_body(self, request: Request) -> bytes:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            given = f"'{media_type}'" if media_type else "none"
            raise APIError(415, f"send the body as JSON with 'Content-Type: application/json' (got {given})",
                           code="unsupported_media_type")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is {length} bytes; at most {MAX_BODY_BYTES}")
        body = bytearray()

        async def read() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > MAX_BODY_BYTES:
                    raise APIError(413, f"the request body is more than {MAX_BODY_BYTES} bytes")

        try:
            await asyncio.wait_for(read(), self.options.read_timeout)
        except ClientDisconnect:
            log.warning("%s went away while sending its request (%d bytes read)", _client(request), len(body))
            raise _ClientGone() from None
        except asyncio.TimeoutError:
            log.warning("%s took more than %g s to send its request; dropped", _client(request),
                        self.options.read_timeout)
            raise APIError(408, f"the request body did not arrive within {self.options.read_timeout:g} s") from None
        return bytes(body)

    # -- checks and errors ----------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        key = self.options.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key")
        # Starlette decodes headers as latin-1: encoding back gives the bytes the client sent (UTF-8 for a
        # non-ASCII key), compared with the key's UTF-8 bytes in constant time.
        scheme, _, given = header.encode("latin-1").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), key.encode("utf-8")):
            raise APIError(401, "incorrect API key", code="invalid_api_key")

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        # After a refused or late body the connection closes: the rest of the body may still be coming.
        headers = {"Connection": "close"} if exc.status in (408, 413) else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code,
                            headers=exc.headers)

    async def _client_gone(self, request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody is listening

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}").body(), status_code=500)


class _HostCheck:
    """Serve only requests whose Host header names one of ``allowed`` (a DNS-rebinding page names its own)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = {name.strip("[]").lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            name = host[1 : host.find("]")] if host.startswith("[") else host.rpartition(":")[0] or host
            if name.lower() not in self.allowed:
                error = APIError(400, f"the Host header '{host}' is not one this server answers to (--allowed-host)")
                await JSONResponse(error.body(), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _memory() -> dict[str, float | None]:
    """The server process's resident memory (MB), now and at its peak: the model, its sessions or
    kernels, and the KV caches of the batch."""
    from ..memory import resident

    now, peak = resident()
    return {"rss_mb": round(now / 2**20, 1) if now else None, "peak_rss_mb": round(peak / 2**20, 1) if peak else None}


def _client(request: Request) -> str:
    return f"client {request.client.host}:{request.client.port}" if request.client else "a client"


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in ``body`` (strings skipped), without parsing it."""
    skeleton = _STRING.sub(b"", body)
    if not skeleton:
        return 0
    return int(np.cumsum(_OPEN[np.frombuffer(skeleton, dtype=np.uint8)], dtype=np.int64).max(initial=0))


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise APIError(400, f"the request body nests {depth} levels deep; at most {MAX_JSON_DEPTH}")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(400, f"malformed JSON in the request body: {exc}") from None


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Reply:
    """One request's answer as its events arrive: per choice its text, tokens and log-probabilities.

    Subclasses shape it as the completions or the chat API does (streamed chunks and the whole body).
    """

    def __init__(self, request: CompletionRequest, model_id: str) -> None:
        self.request = request
        self.model_id = model_id
        self.created = int(time.time())
        self.prompts = [p for p in request.prompts for _ in range(request.options.num_samples)]
        rows = len(self.prompts)
        self.texts = [""] * rows
        self.generated = [0] * rows
        # Every token the logprobs cover (with echo, the prompt's first), their values and tops.
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.logprobs: list[list[float | None]] = [[] for _ in range(rows)]
        self.tops: list[list[dict[int, float] | None]] = [[] for _ in range(rows)]
        self.finish: list[str | None] = [None] * rows
        self.unfinished = rows

    @property
    def done(self) -> bool:
        return self.unfinished == 0

    def opening(self) -> list[dict[str, Any]]:
        """Chunks a stream starts with, before any token."""
        return []

    def add(self, event: TokenEvent | PromptEvent) -> dict[str, Any] | None:
        """Record ``event``; the streamed choice it makes (None when it adds nothing to show)."""
        i = event.index
        if isinstance(event, PromptEvent):
            text, tokens = get_tokenizer().decode(self.prompts[i], errors="replace"), self.prompts[i]
            logprobs, tops = event.logprobs, event.top_logprobs
        else:
            self.generated[i] += 1
            text, tokens = event.text, [event.token]
            logprobs = None if event.logprob is None else [event.logprob]
            tops = [event.top_logprobs]
        self.texts[i] += text
        start = len(self.tokens[i])
        if logprobs is not None:
            self.tokens[i] += tokens
            self.logprobs[i] += logprobs
            self.tops[i] += tops
        finish = FINISH_REASONS[event.finish_reason] if event.finish_reason else None
        if finish is not None:
            self.finish[i] = finish
            self.unfinished -= 1
        if not text and finish is None and logprobs is None:
            return None
        return self.streamed(i, text, start if logprobs is not None else None, finish)

    def streamed(self, i: int, text: str, start: int | None, finish: str | None) -> dict[str, Any]:
        """Choice ``i``'s streamed piece: ``text``, and its tokens' log-probabilities from ``start`` on."""
        raise NotImplementedError

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def usage(self) -> dict[str, int]:
        return usage_body(sum(len(p) for p in self.request.prompts), sum(self.generated))


class _CompletionReply(_Reply):
    def __init__(self, request: CompletionRequest, model_id: str) -> None:
        super().__init__(request, model_id)
        self.id = f"cmpl-{uuid.uuid4().hex}"
        # text offset of each choice's first logprobs token: 0 when the prompt is echoed, else after the prompt
        self.starts = [0 if request.echo else len(get_tokenizer().decode(p, errors="replace")) for p in self.prompts]
        self._cursor = [(0, start) for start in self.starts]  # (tokens, text offset after them) per choice

    def _logprobs(self, i: int, start: int) -> dict[str, Any]:
        count, offset = self._cursor[i] if start >= self._cursor[i][0] else (0, self.starts[i])
        offset += sum(len(token_text(t)) for t in self.tokens[i][count:start])  # a stream adds only the new ones
        self._cursor[i] = (start, offset)
        return logprobs_body(self.tokens[i][start:], self.logprobs[i][start:], self.tops[i][start:], offset)

    def streamed(self, i: int, text: str, start: int | None, finish: str | None) -> dict[str, Any]:
        logprobs = None if start is None or self.request.logprobs is None else self._logprobs(i, start)
        return {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return completion_body(self.id, self.created, self.model_id, choices, None)

    def body(self) -> dict[str, Any]:
        choices = [{"text": text, "index": i, "finish_reason": self.finish[i],
                    "logprobs": None if self.request.logprobs is None else self._logprobs(i, 0)}
                   for i, text in enumerate(self.texts)]
        return completion_body(self.id, self.created, self.model_id, choices, self.usage())


class _ChatReply(_Reply):
    def __init__(self, request: CompletionRequest, model_id: str) -> None:
        super().__init__(request, model_id)
        self.id = f"chatcmpl-{uuid.uuid4().hex}"

    def _logprobs(self, i: int, start: int) -> dict[str, Any] | None:
        if self.request.logprobs is None:
            return None
        return chat_logprobs(self.tokens[i][start:], self.logprobs[i][start:], self.tops[i][start:],
                             self.request.logprobs)

    def opening(self) -> list[dict[str, Any]]:
        return [self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]) for i in range(len(self.texts))]

    def streamed(self, i: int, text: str, start: int | None, finish: str | None) -> dict[str, Any]:
        return {"index": i, "delta": {"content": text} if text else {},
                "logprobs": None if start is None else self._logprobs(i, start), "finish_reason": finish}

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return chat_body(self.id, self.created, self.model_id, choices, None, chunk=True)

    def body(self) -> dict[str, Any]:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": self._logprobs(i, 0),
                    "finish_reason": self.finish[i]} for i, text in enumerate(self.texts)]
        return chat_body(self.id, self.created, self.model_id, choices, self.usage())
