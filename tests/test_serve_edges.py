"""`gpt2reg serve` at its edges, as an exposed server meets them: bad addresses, keys, browsers, slow,
vanishing and hostile clients. Each case is one line in the server's log (never a traceback), and the
server goes on serving. One server (a tiny model's export, torch blocked) serves the module.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from test_serve import CONFIG, ROOT, Server

from benchmarks.serve_load import free_port
from gpt2reg.cli import cli
from gpt2reg.model import build_model
from gpt2reg.onnx import export_onnx

# Exports that repeat a model reuse its trace (conftest.py).
pytestmark = pytest.mark.usefixtures("trace_each_model_once")
KEY = "clé-ключ-鍵"  # not ASCII: clients send its UTF-8 bytes
AUTH = {"Authorization": f"Bearer {KEY}".encode()}
ORIGIN = "http://ok.example"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return export_onnx(build_model(**CONFIG, seed=0), tmp_path_factory.mktemp("edges") / "tiny.onnx")


@pytest.fixture(scope="module")
def server(tiny):
    server = Server(tiny, "--api-key", KEY, "--read-timeout", "1", "--cors-origin", ORIGIN,
                    "--allowed-host", "127.0.0.1", "--allowed-host", "localhost")
    yield server
    server.stop()


def alive(server: Server) -> None:
    """The server still answers a real request, and has logged no traceback."""
    response = server.post({"prompt": "still here", "max_tokens": 2}, AUTH)
    assert response.status_code == 200, response.text
    assert "Traceback" not in server.output()


def log_lines(server: Server, text: str) -> list[str]:
    return [line for line in server.output().splitlines() if text in line]


def serve_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2reg", "serve", *args, "--provider", "cpu"], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


# -- the address ---------------------------------------------------------------------------------


def test_an_address_that_cannot_be_listened_on_is_one_line(tiny: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", str(tiny), "--host", " "])
    assert result.exit_code == 2 and "'--host': must not be empty" in result.output
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    model = tmp_path / "model"  # a torch model: nothing may load (and abort) before the address is checked
    from gpt2reg.checkpoints import save_model

    save_model(build_model(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=64, seed=0), model)
    try:
        for target, args, message in [
            (tiny, ["--host", "nosuch.invalid"], "--host nosuch.invalid: no such address"),
            (tiny, ["--host", "192.0.2.1"], "--host 192.0.2.1 is not an address of this machine"),
            (model, ["--host", "192.0.2.1"], "--host 192.0.2.1 is not an address of this machine"),
            (tiny, ["--port", str(taken.getsockname()[1])], "is already in use by another program"),
            (tiny, ["--lanes", "5", "--max-batch", "4"], "--lanes 5 is more than --max-batch 4"),
            (model, ["--lanes", "2"], "a torch model decodes on one"),
        ]:
            run = serve_cli(str(target), *args)
            lines = run.stderr.strip().splitlines()
            assert run.returncode == 1 and len(lines) == 1 and message in lines[0], run.stderr
    finally:
        taken.close()


def test_every_interface_without_a_key_is_warned_about(tiny: Path) -> None:
    server = Server(tiny, "--host", "0.0.0.0")
    try:
        [warning] = log_lines(server, "without an API key")
        assert "beyond this machine" in warning and "--api-key" in warning
    finally:
        assert server.stop() == 0
    quiet = Server(tiny)  # loopback: nobody else can connect, nothing to warn about
    try:
        assert not log_lines(quiet, "without an API key")
    finally:
        quiet.stop()


def test_sigterm_while_the_model_loads_exits_cleanly(tmp_path: Path) -> None:
    from gpt2reg.checkpoints import save_model

    save_model(build_model(**CONFIG, seed=0), tmp_path / "model")
    port = str(free_port())
    proc = subprocess.Popen([sys.executable, "-m", "gpt2reg", "serve", str(tmp_path / "model"), "--port", port,
                             "--provider", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    for line in proc.stdout:  # the server is up and the model loading (torch importing) on its thread
        if "startup complete" in line:
            break
    proc.terminate()
    output = proc.stdout.read()
    assert proc.wait(120) == 0, output
    assert "Traceback" not in output and "Aborted" not in output


# -- keys, browsers, hosts -----------------------------------------------------------------------


def test_a_non_ascii_key_is_compared_as_utf8_bytes(server: Server) -> None:
    assert server.post({"prompt": "x", "max_tokens": 1}, AUTH).status_code == 200
    for headers in [{"Authorization": "Bearer cle-kluch"}, {"Authorization": f"Bearer {KEY[:-1]}".encode()},
                    {"Authorization": "Bearer clé".encode("latin-1")}, {}]:
        response = server.post({"prompt": "x", "max_tokens": 1}, headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(Exception, match="401"):
        client.models.list()
    alive(server)


def test_a_cross_origin_simple_post_is_refused_and_cors_is_opt_in(server: Server) -> None:
    before = server.health()["batch"]["requests"]
    body = '{"prompt": "make me work", "max_tokens": 5}'
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]:
        headers = AUTH | ({"Content-Type": content_type} if content_type else {}) | {"Origin": "http://evil.example"}
        response = httpx.post(f"{server.url}/v1/completions", content=body, headers=headers)
        assert response.status_code == 415 and "Content-Type: application/json" in response.json()["error"]["message"]
        assert "access-control-allow-origin" not in response.headers
    assert server.health()["batch"]["requests"] == before  # nothing reached the model
    ok = httpx.post(f"{server.url}/v1/completions", content=body,
                    headers=AUTH | {"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200

    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{server.url}/v1/completions", headers=preflight | {"Origin": ORIGIN})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = httpx.options(f"{server.url}/v1/completions", headers=preflight | {"Origin": "http://evil.example"})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    answer = server.post({"prompt": "x", "max_tokens": 1}, AUTH | {"Origin": ORIGIN})
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    alive(server)


def test_without_cors_origins_a_preflight_gets_no_permission(tiny: Path) -> None:
    server = Server(tiny)
    try:
        preflight = httpx.options(f"{server.url}/v1/completions", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
    finally:
        server.stop()


def test_only_allowed_host_headers_are_answered(server: Server) -> None:
    rebound = httpx.get(f"{server.url}/health", headers={"Host": "evil.example:80"})
    assert rebound.status_code == 400 and "Host header 'evil.example:80'" in rebound.json()["error"]["message"]
    assert httpx.get(f"http://localhost:{server.port}/health").status_code == 200
    assert server.health()["status"] == "ok"


# -- slow, vanishing and hostile clients ----------------------------------------------------------


def raw(server: Server, data: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    connection.sendall(data)
    return connection


def head(length: int, extra: str = "") -> bytes:
    key = f"Bearer {KEY}".encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: " + key + f"\r\nContent-Length: {length}\r\n{extra}\r\n".encode())


def read_all(connection: socket.socket) -> bytes:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def test_a_slow_body_gets_408_and_a_slow_head_is_disconnected(server: Server) -> None:
    started = time.monotonic()
    with raw(server, head(100) + b'{"prompt": "') as slow:
        answer = read_all(slow)  # the server answers and closes
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
    assert 0.9 < time.monotonic() - started < 20
    with raw(server, b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le") as trickle:
        time.sleep(0.5)
        trickle.sendall(b"ngth: 5")  # still trickling: each byte does not buy more time
        assert read_all(trickle) == b""  # closed, no answer
    assert len(log_lines(server, "took more than 1 s to send its request; dropped")) == 1
    assert len(log_lines(server, "took more than 1 s to send its request headers; dropped")) == 1
    with raw(server, b"") as idle:  # a connection that never says anything is closed too, quietly
        assert read_all(idle) == b""
    alive(server)


def test_a_client_that_drops_mid_upload_is_one_log_line(server: Server) -> None:
    for _ in range(3):
        with raw(server, head(10_000) + b'{"prompt": "'):
            time.sleep(0.1)  # the server is reading the body; then the connection closes
    deadline = time.monotonic() + 10
    while len(log_lines(server, "went away while sending its request")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(log_lines(server, "went away while sending its request")) == 3
    alive(server)


def test_oversized_heads_and_bodies_are_refused(server: Server) -> None:
    with raw(server, head(2, "X-Padding: " + "x" * 40_000 + "\r\n") + b"{}") as big_head:
        assert read_all(big_head).startswith(b"HTTP/1.1 400")
    with raw(server, head(9 * 1024 * 1024)) as big_body:
        answer = read_all(big_body)
    assert answer.startswith(b"HTTP/1.1 413") and b"at most 8388608" in answer
    chunked = httpx.post(f"{server.url}/v1/completions", headers=AUTH | {"Content-Type": "application/json"},
                         content=iter([b'{"prompt": "'] + [b"x" * 1024 * 1024] * 9))  # no length given
    assert chunked.status_code == 413
    alive(server)


def test_a_large_prompt_is_tokenized_off_the_event_loop(server: Server) -> None:
    import random

    # One long word of 6M letters (a 6 MB body, under the 8 MiB limit): seconds of tiktoken work.
    letters = "".join(random.Random(0).choices("abcdefghijklmnopqrstuvwxyz", k=6_000_000))
    done: dict[str, float] = {}

    def tokenize() -> None:
        response = httpx.post(f"{server.url}/tokenize", json={"prompt": letters}, headers=AUTH, timeout=300)
        assert response.status_code == 200 and response.json()["count"] > 100_000
        done["tokenize"] = time.monotonic()

    worker = threading.Thread(target=tokenize)
    start = time.monotonic()
    worker.start()
    time.sleep(0.3)  # the body is on its way; the server then tokenizes for a second or more
    health = httpx.get(f"{server.url}/health", timeout=120)
    done["health"] = time.monotonic()
    worker.join()
    # On the event loop, /health would answer only once the tokenization is over (with the tokenize reply).
    tokenizing = done["tokenize"] - start
    assert health.status_code == 200 and tokenizing > 0.6, tokenizing
    assert done["tokenize"] - done["health"] > tokenizing / 4, (done, start)
    alive(server)
