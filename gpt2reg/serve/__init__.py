"""``gpt2reg serve``: an OpenAI-compatible completion and chat server with continuous batching.

::

    from gpt2reg.serve import serve

    serve("exports/gpt2-rope.onnx", port=8000, max_batch=16)   # blocks until SIGINT/SIGTERM

Modules: ``protocol`` (request checks, response shapes), ``chat`` (chat templates and the chat API's
shapes), ``batcher`` (the decode thread and its scheduler, driving a ``gpt2reg.decoding.Engine``:
onnxruntime's, or torch's imported only for torch models), ``app`` (Starlette routes, streaming,
errors, the request edge), ``listen`` (the socket and the HTTP protocol's deadlines), ``server``
(loading, uvicorn).
An ``.onnx`` file is served without importing torch.
"""

from .server import serve

__all__ = ["serve"]
