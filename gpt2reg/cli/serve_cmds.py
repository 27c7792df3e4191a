"""``gpt2reg serve``: an OpenAI-compatible completion and chat server over a model or an exported ONNX file."""

from __future__ import annotations

import click

from .options import Real


@click.command()
@click.argument("model", metavar="MODEL_OR_ONNX")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; then set --api-key).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="Where to run: onnxruntime provider for an .onnx file; CUDA or CPU for a torch model.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most sequences decoded together (continuous batching).")
@click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests that may wait for a place in the batch; beyond it, 429.")
@click.option("--max-tokens", type=click.IntRange(min=1),
              help="Largest max_tokens a request may ask for.  [default: the context minus one]")
@click.option("--api-key", envvar="GPT2REG_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on /v1/ requests.")
@click.option("--grace", type=Real(min=0), default=30.0, show_default=True,
              help="Seconds requests in flight may take to finish after SIGTERM.")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads.  [default: all cores]")
@click.option("--lanes", type=click.IntRange(min=1),
              help="Decode threads, each with its own part of the batch, over one onnxruntime session: one "
                   "lane's model call keeps the cores busy while another samples or prefills.  [default: one "
                   "per 16 sequences of --max-batch for an .onnx file on a CPU of 2 or more cores, else 1]")
@click.option("--served-model-name", "served_model_names", multiple=True, metavar="NAME",
              help="A name clients may ask for; repeat for aliases (responses give the first).  "
                   "[default: the file's or folder's name]")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let pages from ORIGIN (e.g. http://localhost:3000, or *) call the API from a browser; "
                   "repeatable.  [default: none]")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Answer only requests whose Host header is NAME (guards against DNS rebinding); "
                   "repeatable.  [default: any]")
@click.option("--read-timeout", type=Real(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a client may take to send a request's headers, and again its body.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
def serve(model, host, port, provider, max_batch, max_queue, max_tokens, api_key, grace, threads, lanes, served_model_names,
          cors_origins, allowed_hosts, read_timeout, log_level) -> None:
    """Serve MODEL_OR_ONNX over HTTP with the OpenAI completions and chat APIs; a page to try it at /.

    An .onnx file runs on onnxruntime without torch; a model directory, checkpoint or hub name on torch.
    Chat uses the model folder's chat template (chat_template.jinja or tokenizer_config.json) if it has
    one, else a plain "Role: content" transcript ending in "Assistant:".

    \b
    gpt2reg serve exports/gpt2-rope.onnx --port 8000
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"prompt": "Hello", "max_tokens": 20, "seed": 0}'
    """
    if api_key is not None and not api_key.strip():
        raise click.BadParameter("must not be empty", param_hint="'--api-key'")
    if not host.strip():
        raise click.BadParameter("must not be empty (127.0.0.1: this machine only; 0.0.0.0: every interface)",
                                 param_hint="'--host'")
    from ..serve import serve as run

    run(model, host=host, port=port, provider=provider, max_batch=max_batch, max_queue=max_queue,
        max_tokens=max_tokens, api_key=api_key, grace=grace, threads=threads, lanes=lanes, log_level=log_level,
        served_model_names=served_model_names, cors_origins=cors_origins, allowed_hosts=allowed_hosts,
        read_timeout=read_timeout)
