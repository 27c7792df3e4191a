"""Serve the browser example, with no network: ``python examples/web/serve.py MODELS_DIR [--port 8000]``.

Then open http://localhost:8000/?model=NAME, where MODELS_DIR/NAME is a ``gpt2reg export --format hf``
folder. Paths: ``/`` this folder's page, ``/transformers/`` transformers.js's browser bundle and
``/ort/`` onnxruntime-web's WASM files (both from ``examples/node/node_modules``: ``make js`` or
``npm ci`` there), ``/models/`` MODELS_DIR. ``POST /result`` hands the page's result to
``on_result`` (the test's hook; printed here).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE.parent / "node" / "node_modules"
ROUTES = {"/transformers/": NODE_MODULES / "@huggingface" / "transformers" / "dist",
          "/ort/": NODE_MODULES / "onnxruntime-web" / "dist"}


class Handler(SimpleHTTPRequestHandler):
    """Static files by path prefix; ``.mjs`` as JavaScript and ``.wasm`` as WebAssembly."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json"}

    def __init__(self, *args: Any, routes: dict[str, Path], on_result: Callable[[dict], None], **kwargs: Any) -> None:
        self.routes, self.on_result = routes, on_result
        super().__init__(*args, directory=str(HERE), **kwargs)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, root in self.routes.items():
            if clean.startswith(prefix):
                target = (root / clean[len(prefix):]).resolve()
                return str(target) if target.is_relative_to(root.resolve()) else str(root / "missing")
        return super().translate_path(path)

    def do_POST(self) -> None:
        if self.path != "/result":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()
        self.on_result(json.loads(body))

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the page shows what happens
        pass


def server(models: str | Path, port: int = 0, on_result: Callable[[dict], None] = print) -> ThreadingHTTPServer:
    """A server for the page on ``localhost:port`` (0: any free port; ``server.server_port`` says which)."""
    routes = {**ROUTES, "/models/": Path(models).resolve()}
    return ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, routes=routes, on_result=on_result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", help="the folder that holds the exported model folders")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if not (ROUTES["/transformers/"] / "transformers.js").is_file():
        sys.exit(f"transformers.js is not installed: run `npm ci` in {NODE_MODULES.parent}")
    httpd = server(args.models, args.port)
    print(f"http://localhost:{httpd.server_port}/?model=NAME  (NAME: a folder in {args.models})")
    httpd.serve_forever()


if __name__ == "__main__":
    main()
