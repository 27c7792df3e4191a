"""``serve``: load a model (an ``.onnx`` file torch-free, anything else with torch) and run the HTTP server."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from ..errors import Gpt2regError, InputError
from .app import LoadedModel, ServerOptions, create_app


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
    log_level: str = "info",
) -> None:
    """Serve ``model`` on ``host:port`` until SIGINT/SIGTERM (OpenAI completions API, continuous batching).

    An ``.onnx`` file runs on onnxruntime with ``provider`` and never imports torch; a model directory,
    checkpoint or hub name runs on torch (on CUDA where ``provider`` allows and it is available).
    On SIGTERM the server stops accepting connections, lets requests in flight finish for up to
    ``grace`` seconds, then exits. Raises ``Gpt2regError`` if the model cannot be loaded.
    """
    import uvicorn

    name = os.fspath(model)
    if name.endswith(".onnx"):
        if not os.path.isfile(name):
            raise InputError(f"{name}: no such ONNX file")
        model_id = Path(name).stem

        def load() -> LoadedModel:
            return _load_onnx(name, provider, threads)
    else:
        model_id = Path(name.rstrip("/")).name or name

        def load() -> LoadedModel:
            return _load_torch(name, provider)

    failures: list[str] = []
    options = ServerOptions(max_batch=max_batch, max_queue=max_queue, max_tokens=max_tokens, api_key=api_key)

    def on_fatal(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(load, model_id, options, on_fatal)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(message)s")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace,
                            lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn re-raises the SIGTERM it shut down on, with the handler it found: a graceful stop exits 0.
    graceful = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None) if graceful else None
    try:
        server.run()
    finally:
        if graceful:
            signal.signal(signal.SIGTERM, previous)
    if failures:
        raise Gpt2regError(f"cannot serve {name}: {failures[0]}")


def _load_onnx(path: str, provider: str, threads: int | None) -> LoadedModel:
    from ..ort.runtime import OnnxGPT  # torch-free
    from .engine import onnx_engine

    model = OnnxGPT(path, provider=provider, threads=threads)
    if model.provider_note:
        logging.getLogger("gpt2reg.serve").warning("%s", model.provider_note)
    return LoadedModel(onnx_engine(model), f"onnxruntime {model.provider}", model.description.eos_token_id)


def _load_torch(name: str, provider: str) -> LoadedModel:
    import torch

    from ..checkpoints import load_model
    from ..tokenizer import EOT_ID
    from .torch_engine import torch_engine

    device = "cuda" if provider == "cuda" or (provider == "auto" and torch.cuda.is_available()) else "cpu"
    return LoadedModel(torch_engine(load_model(name, device=device)), f"torch {device}", EOT_ID)
