"""``serve``: load a model (an ``.onnx`` file torch-free, anything else with torch) and run the HTTP server."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from ..errors import Gpt2regError, InputError
from .app import LoadedModel, ServerOptions, create_app
from .batcher import LANE_ROWS
from .chat import find_chat_template
from .listen import MAX_HEADER_BYTES, http_protocol, listen

log = logging.getLogger("gpt2reg.serve")


def serve(
    model: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    provider: str = "auto",
    max_batch: int = 16,
    max_queue: int = 64,
    max_tokens: int | None = None,
    api_key: str | None = None,
    grace: float = 30.0,
    threads: int | None = None,
    lanes: int | None = None,
    log_level: str = "info",
    served_model_names: Sequence[str] = (),
    cors_origins: Sequence[str] = (),
    allowed_hosts: Sequence[str] = (),
    read_timeout: float = 30.0,
) -> None:
    """Serve ``model`` on ``host:port`` until SIGINT/SIGTERM (OpenAI completions and chat APIs, continuous batching).

    An ``.onnx`` file runs on onnxruntime with ``provider`` and never imports torch; a model directory,
    checkpoint or hub name runs on torch (on CUDA where ``provider`` allows and it is available).
    ``served_model_names`` are the names clients may ask for (the first is the one responses give;
    default: the file's or folder's name). ``cors_origins`` lets pages from those origins call the API
    from a browser; ``allowed_hosts`` answers only requests whose Host header names one of them.
    On SIGTERM the server stops accepting connections, lets requests in flight finish for up to
    ``grace`` seconds, then exits. ``lanes`` decode threads split the batch of an ``.onnx`` file
    (``Batcher``; None: one per ``LANE_ROWS`` rows of ``max_batch`` on a CPU of 2 or more cores, else 1). Raises ``Gpt2regError`` if the address cannot be listened on or
    the model cannot be loaded.
    """
    import uvicorn

    name = os.fspath(model)
    if lanes is not None and lanes > max_batch:
        raise InputError(f"--lanes {lanes} is more than --max-batch {max_batch}: each lane decodes at least one "
                         "sequence; lower --lanes")
    if name.endswith(".onnx"):
        if not os.path.isfile(name):
            raise InputError(f"{name}: no such ONNX file")
        model_id = Path(name).stem

        def load() -> LoadedModel:
            return _load_onnx(name, provider, threads, lanes, max_batch)
    else:
        model_id = Path(name.rstrip("/")).name or name
        if (lanes or 1) > 1:
            raise InputError(f"--lanes {lanes}: lanes split the batch of an .onnx file; a torch model decodes on one")

        def load() -> LoadedModel:
            return _load_torch(name, provider)

    names = tuple(dict.fromkeys(served_model_names)) or (model_id,)
    if not all(n.strip() for n in names):
        raise InputError("--served-model-name must not be empty")
    template = find_chat_template(name)
    template.check()
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(message)s")
    listener = listen(host, port)  # before anything loads: a bad address is one line, not an abort mid-load
    if not listener.local_only and api_key is None:
        log.warning("listening on %s, beyond this machine, without an API key: anyone who can reach it can use "
                    "the model; set --api-key (or GPT2REG_API_KEY)", listener.url)
    failures: list[str] = []
    options = ServerOptions(max_batch=max_batch, max_queue=max_queue, max_tokens=max_tokens, api_key=api_key,
                            chat_template=template, cors_origins=tuple(cors_origins),
                            allowed_hosts=tuple(allowed_hosts), read_timeout=read_timeout)

    def on_fatal(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(load, names, options, on_fatal)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=grace, lifespan="on",
                            http=http_protocol(read_timeout), h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    server = uvicorn.Server(config)
    log.info("serving %s as %s on %s (chat template: %s)", name, ", ".join(names), listener.url, template.source)
    # uvicorn re-raises the SIGTERM it shut down on, with the handler it found: a graceful stop exits 0.
    graceful = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None) if graceful else None
    try:
        server.run(sockets=[listener.sock])
    finally:
        listener.sock.close()
        if graceful:
            signal.signal(signal.SIGTERM, previous)
    if failures:
        raise Gpt2regError(f"cannot serve {name}: {failures[0]}")


def _load_onnx(path: str, provider: str, threads: int | None, lanes: int | None = None,
               max_batch: int = 16) -> LoadedModel:
    from ..ort.providers import CPU
    from ..ort.runtime import OnnxGPT, onnx_engine  # torch-free

    # Threads that sleep between operators: busy-waiting ones take the cores from the event loop and the
    # sampler, which made 16 clients' throughput swing from 2.7x to 4.6x one client's on a busy 2-core machine.
    model = OnnxGPT(path, provider=provider, threads=threads, spinning=False)
    if model.provider_note:
        log.warning("%s", model.provider_note)
    if lanes is None:  # on the CPU, a lane per LANE_ROWS rows: one of 16 beats two of 8 (batcher.py)
        lanes = -(-max_batch // LANE_ROWS) if model.provider == CPU and (os.cpu_count() or 1) >= 2 else 1
    return LoadedModel(onnx_engine(model), f"onnxruntime {model.provider}", model.description.eos_token_id,
                       tuple(onnx_engine(model) for _ in range(lanes - 1)))


def _load_torch(name: str, provider: str) -> LoadedModel:
    import torch

    from ..accel import tune
    from ..checkpoints import load_model
    from ..tokenizer import EOT_ID
    from ..torch_backend import torch_engine

    device = "cuda" if provider == "cuda" or (provider == "auto" and torch.cuda.is_available()) else "cpu"
    return LoadedModel(torch_engine(tune(load_model(name, device=device))), f"torch {device}", EOT_ID)
