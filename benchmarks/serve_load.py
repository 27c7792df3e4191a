"""Measure ``gpt2reg serve`` on an export against ``OnnxGPT.generate`` on the same file, in one run.

::

    python -m benchmarks.serve_load exports/gpt2-rope.onnx --clients 16 --tokens 128 --rounds 3

Starts the server (a subprocess on a free local port) and a process running ``OnnxGPT.generate``,
then per round: ``generate`` alone (the server idle), one streaming client, and ``--clients``
streaming clients at once, each ``--tokens`` new tokens with its own seed (and with ``--churn S``, S
seconds of each client sending request after request of varied lengths: rows join and leave the
batch at almost every step). Prints per-token latency at one client (server vs.
``generate``: the added latency) and the throughput of the concurrent clients over one client's
(continuous batching), medians over the rounds, with the CPU and the load. The machine may be shared:
the ratios compare figures taken in the same run. The server's CPU time per token in each phase (from
``/proc``, Linux) comes too: where other jobs keep the cores busy, throughput follows CPU time, so
``cpu_speedup`` (one client's CPU per token over the batch's) is the most the batch can gain there,
whatever the wall-clock ratio of one run says. Torch-free; the client is ``http.client``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from gpt2reg.accel.machine import cpu_name

PROMPT = "The history of the city begins"


def stream_completion(port: int, body: dict) -> tuple[float, int]:
    """Seconds from sending ``body`` (streamed) to ``data: [DONE]``, and the completion tokens."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps(body | {"stream": True}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    tokens = 0
    for line in response:
        if line.startswith(b"data: [DONE]"):
            break
        if line.startswith(b"data: "):
            usage = json.loads(line[6:]).get("usage")
            tokens = usage["completion_tokens"] if usage else tokens
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed, tokens


def free_port() -> int:
    """A local TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process ``pid`` has used (None without Linux's /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(server: subprocess.Popen, port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited before it was ready")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


# ``OnnxGPT.generate`` in its own process too, so neither side shares a process with the HTTP clients.
_GENERATE = """
import json, sys, time
from gpt2reg.ort.runtime import OnnxGPT
model = OnnxGPT(sys.argv[1], provider="cpu")
for line in sys.stdin:
    seed, tokens = json.loads(line)
    started = time.perf_counter()
    sample = model.generate(sys.argv[2], max_new_tokens=tokens, seed=seed)[0]
    print(json.dumps([time.perf_counter() - started, len(sample.generated_ids)]), flush=True)
"""


class _Generator:
    """A child process timing ``OnnxGPT.generate`` on request."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _GENERATE, path, PROMPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def __call__(self, seed: int, tokens: int) -> tuple[float, int]:
        self.proc.stdin.write(json.dumps([seed, tokens]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the generate process died")
        elapsed, produced = json.loads(line)
        return elapsed, produced

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def churn(port: int, clients: int, tokens: int, seconds: float) -> float:
    """Tokens/s when ``clients`` clients each send one streamed request after another for ``seconds``,
    each asking for between a quarter of ``tokens`` and ``tokens`` (seeded): requests join and leave
    the batch at almost every step, as in real serving."""
    import random

    deadline = time.perf_counter() + seconds

    def client(i: int) -> int:
        rng, produced = random.Random(i), 0
        while time.perf_counter() < deadline:
            produced += stream_completion(port, {"prompt": PROMPT, "max_tokens": rng.randint(tokens // 4, tokens),
                                                 "seed": rng.randrange(2**31)})[1]
        return produced

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        produced = sum(pool.map(client, range(clients)))
    return produced / (time.perf_counter() - started)


def run(path: str, clients: int, tokens: int, rounds: int, churn_seconds: float = 0,
        server_args: tuple[str, ...] = ()) -> dict:
    load_before = os.getloadavg()
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    generate = _Generator(path)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gpt2reg", "serve", path, "--port", str(port), "--provider", "cpu",
                               "--max-batch", str(clients), "--log-level", "warning", *server_args])
    try:
        _wait_ready(server, port)
        body = {"prompt": PROMPT, "max_tokens": tokens}
        stream_completion(port, body | {"max_tokens": 4, "seed": 0})  # warm up both
        generate(0, 4)
        generate_s, single_s, concurrent_tps, single_tps = [], [], [], []
        single_cpu, concurrent_cpu = [], []  # server CPU seconds per token
        for r in range(rounds):
            elapsed, expected = generate(r, tokens)
            generate_s.append(elapsed / expected)
            before = _cpu_seconds(server.pid)
            elapsed, produced = stream_completion(port, body | {"seed": r})
            between = _cpu_seconds(server.pid)
            if produced != expected:
                raise RuntimeError(f"the server made {produced} tokens, generate {expected}, for seed {r}")
            single_s.append(elapsed / produced)
            single_tps.append(produced / elapsed)
            started = time.perf_counter()
            seeds = [1000 * r + i for i in range(clients)]
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(lambda seed: stream_completion(port, body | {"seed": seed}), seeds))
            concurrent_tps.append(sum(n for _, n in results) / (time.perf_counter() - started))
            after = _cpu_seconds(server.pid)
            if before is not None:
                single_cpu.append((between - before) / produced)
                concurrent_cpu.append((after - between) / sum(n for _, n in results))
        churn_tps = churn(port, clients, tokens, churn_seconds) if churn_seconds else None
    finally:
        server.terminate()
        server.wait(60)
        generate.close()
    generate_ms, single_ms = statistics.median(generate_s) * 1e3, statistics.median(single_s) * 1e3
    single, concurrent = statistics.median(single_tps), statistics.median(concurrent_tps)
    return {
        "file": path, "cpu": cpu_name(), "cores": os.cpu_count(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_before": load_before, "load_after": os.getloadavg(),
        "rounds": rounds, "tokens": tokens, "clients": clients,
        "generate_ms_per_token": round(generate_ms, 2), "server_ms_per_token": round(single_ms, 2),
        "added_latency": round(single_ms / generate_ms - 1, 4),
        "single_client_tokens_per_s": round(single, 1), "concurrent_tokens_per_s": round(concurrent, 1),
        "speedup": round(concurrent / single, 2),
    } | _cpu_figures(single_cpu, concurrent_cpu) | ({"churn_tokens_per_s": round(churn_tps, 1)} if churn_tps else {})


def _cpu_figures(single: list[float], concurrent: list[float]) -> dict:
    """Median server CPU milliseconds per token in each phase, and their ratio (None below a clock tick)."""
    if not single:
        return {}
    one, many = statistics.median(single), statistics.median(concurrent)
    return {"server_cpu_ms_per_token_single": round(one * 1e3, 2),
            "server_cpu_ms_per_token_concurrent": round(many * 1e3, 2),
            "cpu_speedup": round(one / many, 2) if one and many else None}  # below /proc's tick: unmeasured


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", help="an exported .onnx file (KV-cache graph)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--churn", type=float, default=0, metavar="SECONDS",
                        help="then, for SECONDS, each client sends request after request of varied lengths")
    parser.add_argument("--server-args", default="", metavar="ARGS",
                        help="more `gpt2reg serve` options, e.g. '--threads 1 --lanes 2'")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.onnx, args.clients, args.tokens, args.rounds, args.churn, tuple(shlex.split(args.server_args))),
                     indent=2))


if __name__ == "__main__":
    main()
