"""`gpt2reg serve`: the real server process on a free local port, talked to over HTTP.

The servers run a tiny model's export in a process where importing torch fails, so every test here
also proves the ONNX server torch-free. References come from `gpt2reg generate` (the CLI, or the
same decode loop through ``OnnxGPT.generate``) with the same seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime import NO_TORCH

from benchmarks.serve_load import free_port
from gpt2reg.checkpoints import save_model
from gpt2reg.cli import cli
from gpt2reg.model import build_model
from gpt2reg.onnx import export_onnx
from gpt2reg.ort.runtime import OnnxGPT
from gpt2reg.tokenizer import get_tokenizer

# The GPT-2 vocabulary so text prompts encode; a long context so one request can outlast a disconnect.
CONFIG = dict(n_layer=2, n_head=2, n_embd=32, block_size=1024, vocab_size=50257, pos="rope", init_std=0.2)
# Exports that repeat a model reuse its trace (conftest.py).
pytestmark = pytest.mark.usefixtures("trace_each_model_once")
ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

# Runs the CLI with torch unimportable; says at exit whether torch got imported anyway.
LAUNCH = NO_TORCH + """
import atexit
atexit.register(lambda: print("torch imported:", any(m == "torch" or m.startswith("torch.") for m in sys.modules),
                              file=sys.stderr, flush=True))
from gpt2reg.cli import cli
cli(sys.argv[1:], prog_name="gpt2reg")
"""


class Server:
    """`gpt2reg serve MODEL ARGS` in a subprocess (torch blocked unless ``torch_ok``), ready on return."""

    def __init__(self, model: Path, *args: str, torch_ok: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")
        launch = ["-m", "gpt2reg"] if torch_ok else ["-c", LAUNCH]
        command = [sys.executable, *launch, "serve", str(model), "--port", str(self.port), "--provider", "cpu",
                   "--log-level", "warning", *args]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.output()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def post(self, body: dict, headers: dict | None = None, timeout: float = 60,
             path: str = "/v1/completions") -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=timeout)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def stream(server: Server, body: dict, headers: dict | None = None,
           path: str = "/v1/completions") -> tuple[list[dict], bool]:
    """The events of a streamed completion, and whether it ended with ``data: [DONE]``."""
    events, done = [], False
    with httpx.stream("POST", f"{server.url}{path}", json=body | {"stream": True}, headers=headers,
                      timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            assert not done, "data after [DONE]"
            if line == "data: [DONE]":
                done = True
            else:
                events.append(json.loads(line[6:]))
    return events, done


def streamed_texts(events: list[dict], choices: int) -> list[str]:
    texts = [""] * choices
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    return texts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model's directory and its KV-cache export."""
    folder = tmp_path_factory.mktemp("serve")
    model = build_model(**CONFIG, seed=0)
    save_model(model, folder / "model")
    return folder / "model", export_onnx(model, folder / "tiny.onnx")


@pytest.fixture(scope="module")
def slow(tmp_path_factory) -> tuple[Path, OnnxGPT]:
    """A wider export (~3 ms a token here): one long request outlasts a disconnect or a SIGTERM."""
    model = build_model(**CONFIG | dict(n_embd=256, n_head=4), seed=0)
    path = export_onnx(model, tmp_path_factory.mktemp("slow") / "slow.onnx")
    return path, OnnxGPT(path, provider="cpu")


@pytest.fixture(scope="module")
def reference(tiny) -> OnnxGPT:
    return OnnxGPT(tiny[1], provider="cpu")


@pytest.fixture(scope="module")
def server(tiny):
    server = Server(tiny[1], "--api-key", KEY, "--max-batch", "16", "--max-tokens", "200",
                    "--served-model-name", "tiny", "--served-model-name", "org/tiny-alias")
    yield server
    server.stop()


def eval_losses(model, ids: list[int]) -> np.ndarray:
    """Each of ``ids[1:]``'s loss given the tokens before it, from ``gpt2reg eval``'s scoring
    (``evaluate_tokens``: mean loss x count over each prefix, differenced)."""
    from gpt2reg.training.eval import evaluate_tokens

    def total(k: int) -> float:
        if k < 2:
            return 0.0
        result = evaluate_tokens(model, ids[:k], batch_size=1)
        return result["loss"] * result["tokens"]

    return np.array([total(k + 1) - total(k) for k in range(1, len(ids))])


def check_echo(choice: dict, text: str, losses: np.ndarray, top: int) -> None:
    """An echoed prompt as OpenAI's legacy completions give it, its log-probabilities minus ``losses``."""
    ids = get_tokenizer().encode(text)
    logprobs = choice["logprobs"]
    assert choice["text"].startswith(text) and logprobs["tokens"][: len(ids)] == [
        get_tokenizer().decode([t]) for t in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    np.testing.assert_allclose(-np.array(logprobs["token_logprobs"][1 : len(ids)]), losses, rtol=1e-5, atol=1e-5)
    offsets = np.cumsum([0] + [len(t) for t in logprobs["tokens"][:-1]])
    assert logprobs["text_offset"] == offsets.tolist()
    for token, value, alternatives in zip(logprobs["tokens"][1:], logprobs["token_logprobs"][1:],
                                          logprobs["top_logprobs"][1:], strict=True):
        assert alternatives[token] == value and top <= len(alternatives) <= top + 1  # the chosen one is always there
        assert list(alternatives.values()) == sorted(alternatives.values(), reverse=True)


def cli_generate(path: Path, prompt: str, *args: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["generate", "--onnx", str(path), "-p", prompt, "--json", "--provider", "cpu",
                                      *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("["):])


# -- answers ------------------------------------------------------------------------------------


def test_health_models_and_page(server: Server) -> None:
    health = server.health()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["context"] == 1024
    assert health["max_tokens"] == 200 and set(health["batch"]) >= {"batch", "max_batch_seen", "queued", "tokens"}
    memory = health["memory"]  # the server's own resident memory (MB): torch and a tiny model, no more
    assert 20 < memory["rss_mb"] <= memory["peak_rss_mb"] < 4000
    models = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny", "org/tiny-alias"]
    page = httpx.get(server.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<textarea" in page.text and "/v1/completions" in page.text and "http" not in page.text.split("<body")[0]


def test_completion_equals_generate_streamed_or_not(server: Server, tiny) -> None:
    prompt = "Hello, my dog"
    want = cli_generate(tiny[1], prompt, "-n", "24", "--seed", "7", "--top-k", "50", "--top-p", "0.9",
                        "-t", "0.8")[0]
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "seed": 7, "top_k": 50, "top_p": 0.9,
            "temperature": 0.8}
    reply = server.post(body, AUTH).json()
    assert reply["object"] == "text_completion" and reply["model"] == "tiny"
    [choice] = reply["choices"]
    assert choice["text"] == want["text"] and choice["index"] == 0
    assert choice["finish_reason"] == {"length": "length", "eos": "stop", "stop": "stop"}[want["finish_reason"]]
    prompt_tokens, completion_tokens = len(want["prompt_ids"]), len(want["generated_ids"])
    assert reply["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}

    events, done = stream(server, body, AUTH)
    assert done and streamed_texts(events, 1) == [want["text"]]
    assert all(e["id"] == events[0]["id"] and e["object"] == "text_completion" for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert events[-1]["usage"] == reply["usage"]  # usage comes with the last chunk
    assert all(c["finish_reason"] is None for e in events[:-1] for c in e["choices"])
    usage_events, _ = stream(server, body | {"stream_options": {"include_usage": True}}, AUTH)
    assert usage_events[-1]["choices"] == [] and usage_events[-1]["usage"] == reply["usage"]


def test_n_and_list_prompts_and_token_ids(server: Server, reference: OnnxGPT) -> None:
    prompts = ["Once upon a time", "In 2026, the"]
    want = [s.text for s in reference.generate(prompts, max_new_tokens=10, seed=3, num_samples=2)]
    assert len(set(want)) == 4
    reply = server.post({"prompt": prompts, "n": 2, "max_tokens": 10, "seed": 3}, AUTH).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in reply["choices"]] == want
    ids = [get_tokenizer().encode(p) for p in prompts]
    assert reply["usage"]["prompt_tokens"] == sum(len(i) for i in ids)  # each prompt once, whatever n
    events, done = stream(server, {"prompt": prompts, "n": 2, "max_tokens": 10, "seed": 3}, AUTH)
    assert done and streamed_texts(events, 4) == want
    as_ids = server.post({"prompt": ids, "n": 2, "max_tokens": 10, "seed": 3}, AUTH).json()
    assert [c["text"] for c in as_ids["choices"]] == want
    one = server.post({"prompt": ids[1], "max_tokens": 10, "seed": 3}, AUTH).json()
    assert one["choices"][0]["text"] == want[2]


def test_stop_strings_and_greedy(server: Server, reference: OnnxGPT) -> None:
    prompt = "The meaning of life is"
    full = reference.generate(prompt, max_new_tokens=30, greedy=True)[0]
    stop = full.text[12:15]
    cut = full.text[: full.text.index(stop)]
    want = reference.generate(prompt, max_new_tokens=30, greedy=True, stop=[stop, "never appears"])[0]
    assert want.text == cut and want.finish_reason == "stop"
    body = {"prompt": prompt, "max_tokens": 30, "temperature": 0, "stop": [stop, "never appears"]}
    reply = server.post(body, AUTH).json()
    assert reply["choices"][0]["text"] == cut and reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == len(want.generated_ids) < 30
    events, _ = stream(server, body, AUTH)
    assert streamed_texts(events, 1) == [cut]
    assert server.post(body | {"stop": stop}, AUTH).json()["choices"][0]["text"] == cut


def test_logprobs_of_the_chosen_tokens(server: Server, reference: OnnxGPT) -> None:
    prompt = "Hello"
    reply = server.post({"prompt": prompt, "max_tokens": 5, "temperature": 0, "logprobs": 2}, AUTH).json()
    logprobs = reply["choices"][0]["logprobs"]
    ids = get_tokenizer().encode(prompt)
    generated = [get_tokenizer().encode_single_token(t) for t in logprobs["tokens"]]
    logits = reference.logits([ids + generated])[0, len(ids) - 1 :]
    log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    for step, token in enumerate(generated):
        assert logprobs["token_logprobs"][step] == pytest.approx(log_softmax[step, token], abs=1e-4)
        top = logprobs["top_logprobs"][step]
        assert len(top) == 2 and max(top.values()) == pytest.approx(logprobs["token_logprobs"][step])  # greedy
    assert logprobs["text_offset"][0] == len(prompt)
    events, _ = stream(server, {"prompt": prompt, "max_tokens": 5, "temperature": 0, "logprobs": 0}, AUTH)
    assert [e["choices"][0]["logprobs"]["tokens"][0] for e in events] == logprobs["tokens"]
    assert all(e["choices"][0]["logprobs"]["top_logprobs"] is None for e in events)


def test_echo_gives_the_prompts_log_probabilities_as_eval_scores_them(server: Server, reference: OnnxGPT) -> None:
    text = "The quick brown fox jumps over the lazy dog"
    losses = eval_losses(reference, get_tokenizer().encode(text))
    body = {"prompt": text, "echo": True, "max_tokens": 0, "logprobs": 2}
    reply = server.post(body, AUTH).json()
    [choice] = reply["choices"]
    check_echo(choice, text, losses, 2)
    assert choice["text"] == text and choice["finish_reason"] == "length"
    assert reply["usage"] == {"prompt_tokens": len(losses) + 1, "completion_tokens": 0, "total_tokens": len(losses) + 1}

    # lm-evaluation-harness's request: token ids, one greedy token after the prompt
    ids = get_tokenizer().encode(text)
    greedy = reference.generate([ids], max_new_tokens=1, greedy=True)[0]
    scored = server.post({"prompt": ids, "echo": True, "max_tokens": 1, "logprobs": 1, "temperature": 0}, AUTH).json()
    [choice] = scored["choices"]
    check_echo(choice, text, losses, 1)
    assert choice["text"] == text + greedy.text and len(choice["logprobs"]["tokens"]) == len(ids) + 1
    last = choice["logprobs"]["top_logprobs"][-1]
    assert max(last.values()) == choice["logprobs"]["token_logprobs"][-1]  # greedy: the most likely

    # streamed: the prompt comes first, whole, then the tokens; the same numbers
    events, done = stream(server, {"prompt": ids, "echo": True, "max_tokens": 1, "logprobs": 1,
                                   "temperature": 0}, AUTH)
    assert done and [c["text"] for e in events for c in e["choices"]] == [text, greedy.text]
    pieces = [c["logprobs"] for e in events for c in e["choices"]]
    joined = {k: [v for p in pieces for v in p[k]] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
    assert joined == choice["logprobs"]
    none, _ = stream(server, body | {"logprobs": None}, AUTH)
    assert [c["text"] for e in none for c in e["choices"]] == [text] and none[0]["choices"][0]["logprobs"] is None

    # several prompts, n copies: each choice echoes its own prompt
    prompts = ["Hello there", "A second prompt"]
    many = server.post({"prompt": prompts, "n": 2, "echo": True, "max_tokens": 3, "seed": 1}, AUTH).json()
    plain = server.post({"prompt": prompts, "n": 2, "max_tokens": 3, "seed": 1}, AUTH).json()
    assert [c["text"] for c in many["choices"]] == [prompts[i // 2] + c["text"] for i, c in enumerate(plain["choices"])]


def test_chat_completions_render_the_plain_template_and_complete_it(server: Server, reference: OnnxGPT) -> None:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "!"}]}]
    prompt = "System: You are terse.\n\nUser: Hello!\n\nAssistant:"
    want = reference.generate([prompt] * 1, max_new_tokens=12, seed=4, num_samples=2, stop=["\n"])
    body = {"model": "org/tiny-alias", "messages": messages, "max_tokens": 12, "seed": 4, "n": 2, "stop": "\n"}
    reply = server.post(body, AUTH, path="/v1/chat/completions").json()
    assert reply["object"] == "chat.completion" and reply["model"] == "tiny" and reply["id"].startswith("chatcmpl-")
    assert [c["message"] for c in reply["choices"]] == [{"role": "assistant", "content": s.text} for s in want]
    assert [c["finish_reason"] for c in reply["choices"]] == [
        {"length": "length", "eos": "stop", "stop": "stop"}[s.finish_reason] for s in want]
    prompt_tokens = len(get_tokenizer().encode(prompt))
    assert reply["usage"]["prompt_tokens"] == prompt_tokens
    assert reply["usage"]["completion_tokens"] == sum(len(s.generated_ids) for s in want)
    tokenized = httpx.post(f"{server.url}/tokenize", json={"messages": messages}, headers=AUTH).json()
    assert tokenized["tokens"] == get_tokenizer().encode(prompt) and tokenized["count"] == prompt_tokens

    events, done = stream(server, body | {"stream_options": {"include_usage": True}}, AUTH, path="/v1/chat/completions")
    assert done and all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    assert [e["choices"][0]["delta"] for e in events[:2]] == [{"role": "assistant", "content": ""}] * 2
    texts = ["", ""]
    for event in events[2:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == [s.text for s in want]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == reply["usage"]

    greedy = reference.generate(prompt, max_new_tokens=4, greedy=True)[0]
    scored = server.post({"messages": messages, "max_tokens": 4, "temperature": 0, "logprobs": True,
                          "top_logprobs": 3}, AUTH, path="/v1/chat/completions").json()["choices"][0]
    content = scored["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == scored["message"]["content"] == greedy.text
    for entry in content:
        assert len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["logprob"] == entry["logprob"]
        assert bytes(entry["bytes"]).decode() == entry["token"]


def test_models_names_and_the_tokenizer_routes(server: Server) -> None:
    models = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["tiny", "org/tiny-alias"]
    card = httpx.get(f"{server.url}/v1/models/org/tiny-alias", headers=AUTH)
    assert card.status_code == 200 and card.json()["id"] == "org/tiny-alias" and card.json()["context_length"] == 1024
    missing = httpx.get(f"{server.url}/v1/models/gpt-4", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{server.url}/v1/models/tiny").status_code == 401
    assert server.post({"model": "org/tiny-alias", "prompt": "x", "max_tokens": 1}, AUTH).json()["model"] == "tiny"

    text = "Hello <|endoftext|> world"
    tokenized = httpx.post(f"{server.url}/tokenize", json={"prompt": text, "return_token_strs": True}, headers=AUTH)
    ids = get_tokenizer().encode(text, allowed_special="all")
    assert tokenized.json() == {"count": len(ids), "max_model_len": 1024, "tokens": ids,
                                "token_strs": [get_tokenizer().decode([t]) for t in ids]}
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": ids}, headers=AUTH).json()
    assert back == {"prompt": text}
    info = httpx.get(f"{server.url}/tokenizer_info", headers=AUTH).json()
    assert info["eos_token"] == info["bos_token"] == "<|endoftext|>" and "Assistant:" in info["chat_template"]
    for path, body, message in [("/tokenize", {"prompt": 5}, "'prompt' must be a string"),
                                ("/detokenize", {"tokens": [1, 99999]}, "outside the vocabulary"),
                                ("/detokenize", {"tokens": "abc"}, "'tokens' must be an array")]:
        response = httpx.post(f"{server.url}{path}", json=body, headers=AUTH)
        assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert httpx.post(f"{server.url}/tokenize", json={"prompt": "x"}).status_code == 401


def test_the_openai_client_works_unchanged(server: Server, reference: OnnxGPT) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny", "org/tiny-alias"]
    want = reference.generate("Hello, my dog", max_new_tokens=12, seed=0, top_p=0.9)[0]
    reply = client.completions.create(model="tiny", prompt="Hello, my dog", max_tokens=12, seed=0, top_p=0.9)
    assert reply.choices[0].text == want.text and reply.usage.completion_tokens == len(want.generated_ids)
    chunks = list(client.completions.create(model="tiny", prompt="Hello, my dog", max_tokens=12, seed=0, top_p=0.9,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens
    import openai

    with pytest.raises(openai.BadRequestError, match="context of 1024"):
        client.completions.create(model="tiny", prompt="hi " * 1020, max_tokens=10)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_16_concurrent_clients_each_get_what_they_get_alone(server: Server, reference: OnnxGPT) -> None:
    words = ["Hello", "The quick brown fox", "In a hole in the ground there lived", "Once", "Why is the sky blue?"]
    requests = [{"prompt": words[i % 5] + f" {i}", "max_tokens": 40 + 7 * i, "seed": 100 + i,
                 "top_k": [None, 40][i % 2], "temperature": [1.0, 0.7, 0][i % 3]} for i in range(16)]
    want = [reference.generate(r["prompt"], max_new_tokens=r["max_tokens"], seed=r["seed"], top_k=r["top_k"],
                               temperature=r["temperature"])[0].text for r in requests]
    before = server.health()["batch"]
    barrier = threading.Barrier(16)

    def client(i: int) -> str:
        barrier.wait()
        if i % 2:
            events, done = stream(server, requests[i], AUTH)
            assert done
            return streamed_texts(events, 1)[0]
        return server.post(requests[i], AUTH).json()["choices"][0]["text"]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(client, range(16)))
    assert got == want
    after = server.health()["batch"]
    assert after["max_batch_seen"] >= 4, after  # several requests really were decoded together
    assert after["batch"] == 0 and after["queued"] == 0
    assert after["tokens"] - before["tokens"] >= sum(len(reference.generate(r["prompt"], max_new_tokens=1)[0].generated_ids)
                                                     for r in requests)


def test_health_is_503_while_loading_and_a_failed_load_is_reported(tiny) -> None:
    from starlette.testclient import TestClient

    from gpt2reg.ort.runtime import onnx_engine
    from gpt2reg.serve.app import LoadedModel, ServerOptions, create_app

    release = threading.Event()

    def load() -> LoadedModel:
        assert release.wait(60)
        return LoadedModel(onnx_engine(OnnxGPT(tiny[1], provider="cpu")), "onnxruntime", 50256)

    with TestClient(create_app(load, "tiny", ServerOptions())) as client:
        assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "loading"
        loading = client.post("/v1/completions", json={"prompt": "x"})
        assert loading.status_code == 503 and "loading" in loading.json()["error"]["message"]
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}).status_code == 200

    def broken() -> LoadedModel:
        raise ValueError("weights are missing")

    fatal: list[str] = []
    with TestClient(create_app(broken, "broken", ServerOptions(), fatal.append)) as client:
        deadline = time.monotonic() + 30
        while not fatal:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        health = client.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "error", "model": "broken",
                                                               "error": "weights are missing"}
    assert fatal == ["weights are missing"]


def test_the_batcher_survives_a_failing_step_and_a_client_that_cannot_take_tokens(reference: OnnxGPT) -> None:
    import queue

    from gpt2reg.generation import GenerationOptions
    from gpt2reg.ort.runtime import onnx_engine
    from gpt2reg.serve.batcher import Batcher, Failure, Job

    engine = onnx_engine(reference)
    real_step, failures = engine.step, [RuntimeError("out of memory")]

    def step(tokens):
        if failures:
            raise failures.pop()
        return real_step(tokens)

    engine.step = step
    batcher = Batcher(engine, max_batch=4, max_queue=4)
    try:
        got: queue.Queue = queue.Queue()
        greedy = GenerationOptions(greedy=True, max_new_tokens=5, seed=0)
        batcher.submit(Job([[1, 2, 3]], greedy, got.put))
        assert len(got.get(timeout=30)) == 1  # the first token, sampled from the prefill
        failure = got.get(timeout=30)
        assert isinstance(failure, Failure) and "out of memory" in failure.message

        def closed(events) -> None:
            raise RuntimeError("Event loop is closed")

        batcher.submit(Job([[4, 5]], greedy, closed))
        batcher.submit(Job([[1, 2, 3]], greedy, got.put))
        tokens = []
        while not tokens or tokens[-1].finish_reason is None:
            tokens += got.get(timeout=30)
        want = reference.generate([[1, 2, 3]], max_new_tokens=5, greedy=True)[0].generated_ids
        assert [e.token for e in tokens] == want
        real_add = engine.add
        engine.add = lambda prompts, copies: real_add(prompts, copies) * np.nan  # as NaN weights would give
        batcher.submit(Job([[7, 8]], greedy, got.put))
        nan = got.get(timeout=30)
        assert isinstance(nan, Failure) and "NaN" in nan.message
        deadline = time.monotonic() + 10  # the finished row leaves just after its last token is handed over
        while batcher.stats.batch and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.stats.batch == 0
    finally:
        batcher.close()


def test_lanes_share_the_batch_and_each_job_gets_its_own_tokens(reference: OnnxGPT) -> None:
    """Two decode threads over one session: jobs beyond lane 0's ``lane_rows`` go to the emptier lane,
    both lanes decode at once, and every job gets exactly what it gets alone with its seed."""
    import queue

    from gpt2reg.generation import GenerationOptions
    from gpt2reg.ort.runtime import onnx_engine
    from gpt2reg.serve.batcher import Batcher, Job

    lanes = [onnx_engine(reference), onnx_engine(reference)]
    rows_seen = [0, 0]
    for lane, engine in enumerate(lanes):
        def step(tokens, real=engine.step, lane=lane):
            rows_seen[lane] = max(rows_seen[lane], len(tokens))
            return real(tokens)
        engine.step = step
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10], [11, 12]]
    options = [GenerationOptions(max_new_tokens=6, seed=s, num_samples=1 + s % 2) for s in range(len(prompts))]
    batcher = Batcher(lanes, max_batch=8, max_queue=8, lane_rows=2)
    try:
        inboxes = [queue.Queue() for _ in prompts]
        for prompt, o, inbox in zip(prompts, options, inboxes, strict=True):
            batcher.submit(Job([prompt], o, inbox.put))
        for prompt, o, inbox in zip(prompts, options, inboxes, strict=True):
            tokens: dict[int, list[int]] = {}
            finished = 0
            while finished < o.num_samples:
                for event in inbox.get(timeout=60):
                    tokens.setdefault(event.index, []).append(event.token)
                    finished += event.finish_reason is not None
            alone = reference.generate([prompt], o)
            assert [tokens[i] for i in range(o.num_samples)] == [s.generated_ids for s in alone]
        assert rows_seen[0] >= 2 and rows_seen[1] >= 2, rows_seen  # both lanes decoded several rows
        assert batcher.stats.max_batch_seen > 2
    finally:
        batcher.close()


# -- bad requests -------------------------------------------------------------------------------

BAD = [
    # (raw body or JSON object, headers, status, part of the message)
    (b'{"prompt": "x", ', AUTH, 400, "malformed JSON"),
    (b"", AUTH, 400, "body is empty"),
    (b"[1, 2]", AUTH, 400, "must be a JSON object"),
    (b'{"prompt": "x", "temperature": NaN}', AUTH, 400, "finite"),
    ({"max_tokens": 5}, AUTH, 400, "'prompt' is required"),
    ({"prompt": ""}, AUTH, 400, "empty"),
    ({"prompt": []}, AUTH, 400, "empty"),
    ({"prompt": [[]]}, AUTH, 400, "empty"),
    ({"prompt": 5}, AUTH, 400, "'prompt' must be"),
    ({"prompt": [1, 2.5]}, AUTH, 400, "token ids"),
    ({"prompt": [1, 99999]}, AUTH, 400, "outside the model's vocabulary"),
    ({"prompt": [{"a": 1}]}, AUTH, 400, "prompt"),
    ({"prompt": "x", "max_tokens": "10"}, AUTH, 400, "'max_tokens' must be an integer"),
    ({"prompt": "x", "max_tokens": 0}, AUTH, 400, "'max_tokens' must be an integer >= 1"),
    ({"prompt": "x", "max_tokens": 201}, AUTH, 400, "more than this server allows (200)"),
    ({"prompt": "hello" + " hello" * 999, "max_tokens": 100}, AUTH, 400, "1000 tokens and max_tokens is 100: 1100 tokens"),
    ({"prompt": "x", "temperature": "hot"}, AUTH, 400, "'temperature' must be a number"),
    ({"prompt": "x", "temperature": -1}, AUTH, 400, "temperature"),
    ({"prompt": "x", "top_p": 1.5}, AUTH, 400, "top_p"),
    ({"prompt": "x", "top_k": 0}, AUTH, 400, "top_k"),
    ({"prompt": "x", "n": 0}, AUTH, 400, "'n' must be"),
    ({"prompt": "x", "n": 17}, AUTH, 400, "more than this server decodes at once"),
    ({"prompt": "x", "seed": -1}, AUTH, 400, "'seed' must be"),
    ({"prompt": "x", "seed": True}, AUTH, 400, "'seed' must be an integer"),
    ({"prompt": "x", "stream": "yes"}, AUTH, 400, "'stream' must be a boolean"),
    ({"prompt": "x", "stop": 5}, AUTH, 400, "'stop' must be"),
    ({"prompt": "x", "stop": ["a", 1]}, AUTH, 400, "'stop' must be"),
    ({"prompt": "x", "logprobs": 9}, AUTH, 400, "'logprobs' must be an integer from 0 to 5"),
    ({"prompt": "x", "echo": "yes"}, AUTH, 400, "'echo' must be a boolean"),
    ({"prompt": "x", "echo": True, "max_tokens": -1}, AUTH, 400, "'max_tokens' must be an integer >= 0"),
    ({"prompt": "x" * 200_000}, AUTH, 400, "more than the model's context of 1024 tokens can hold"),
    (b'{"prompt": ' + b"[" * 65 + b"]" * 65 + b"}", AUTH, 400, "nests 66 levels deep; at most 64"),
    (b"[" * 100_000, AUTH, 400, "nests 100000 levels deep"),
    ({"prompt": "x", "frequency_penalty": 0.5}, AUTH, 400, "not supported"),
    ({"prompt": "x", "model": "gpt-4"}, AUTH, 404, "does not exist"),
    ({"prompt": "x"}, None, 401, "missing API key"),
    ({"prompt": "x"}, {"Authorization": "Bearer wrong"}, 401, "incorrect API key"),
    ({"prompt": "x"}, {"Authorization": KEY}, 401, "incorrect API key"),
]


@pytest.mark.parametrize("body, headers, status, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_request_gets_its_status_and_a_json_error(server: Server, body, headers, status, message) -> None:
    if isinstance(body, bytes):
        response = httpx.post(f"{server.url}/v1/completions", content=body, timeout=30,
                              headers={"Content-Type": "application/json"} | (headers or {}))
    else:
        response = server.post(body, headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    good = server.post({"prompt": "still alive", "max_tokens": 3}, AUTH)
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] >= 1


def test_wrong_paths_and_methods_are_json_errors(server: Server) -> None:
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    for response, status in [(httpx.get(f"{server.url}/v1/nothing"), 404),
                             (httpx.get(f"{server.url}/v1/completions", headers=AUTH), 405)]:
        assert response.status_code == status and "message" in response.json()["error"]


# -- slots, queue, shutdown -----------------------------------------------------------------------


def test_a_disconnecting_client_frees_its_slot_and_a_full_queue_is_429(slow) -> None:
    server = Server(slow[0], "--max-batch", "1", "--max-queue", "0")
    try:
        long = {"prompt": "Tell me everything", "max_tokens": 1000, "seed": 0}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=long | {"stream": True}, timeout=60) as r:
            lines = r.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)  # the first token arrived: the request holds the only slot
            busy = server.post({"prompt": "x", "max_tokens": 2})
            assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
        deadline = time.monotonic() + 10
        while server.health()["batch"]["batch"] and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = server.health()["batch"]
        assert stats["batch"] == 0 and stats["tokens"] < 1000 and stats["rejected"] == 1
        assert server.post({"prompt": "x", "max_tokens": 2}).status_code == 200

        # a client waiting for a whole (non-streamed) answer frees its slot too
        with pytest.raises(httpx.ReadTimeout):
            server.post(long, timeout=0.3)
        deadline = time.monotonic() + 10
        while server.health()["batch"]["batch"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.health()["batch"]["tokens"] - stats["tokens"] < 1000
        assert server.post({"prompt": "x", "max_tokens": 2}).status_code == 200
    finally:
        server.stop()


def test_sigterm_finishes_requests_in_flight_then_exits_without_torch(slow) -> None:
    server = Server(slow[0], "--grace", "120")  # generous: the machine running the tests may be busy
    body = {"prompt": "Count with me", "max_tokens": 300, "seed": 1, "stream": True}
    want = slow[1].generate(body["prompt"], max_new_tokens=300, seed=1)[0].text
    texts, done = [], []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        texts.append(json.loads(next(lines)[6:])["choices"][0]["text"])
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # no new requests once SIGTERM arrived: the listening socket closes
            try:
                httpx.get(f"{server.url}/health", timeout=2)
            except (httpx.ConnectError, httpx.RemoteProtocolError):  # refused, or closed without an answer
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        for line in lines:
            if line == "data: [DONE]":
                done.append(True)
            elif line:
                texts.append(json.loads(line[6:])["choices"][0]["text"])
    assert done and "".join(texts) == want  # the request in flight was finished
    assert server.proc.wait(60) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=2)
    output = server.output()
    assert "torch imported: False" in output and "Traceback" not in output


def test_load_200_requests_from_32_clients(tiny) -> None:
    """Bounded: 200 requests, 32 at once, local only. Each is answered whole or deliberately refused (429)."""
    server = Server(tiny[1], "--max-batch", "8", "--max-queue", "8")
    try:
        def client(i: int) -> tuple[int, float, int]:
            body = {"prompt": f"Request {i}:", "max_tokens": 8 + i % 16, "seed": i}
            started = time.perf_counter()
            if i % 2:
                response = server.post(body, timeout=120)
                if response.status_code == 429:
                    return 429, 0.0, 0
                assert response.status_code == 200, response.text
                choice = response.json()["choices"][0]
                tokens = response.json()["usage"]["completion_tokens"]
            else:
                try:
                    events, done = stream(server, body)
                except AssertionError as exc:
                    if "429" in str(exc) or "queue_full" in str(exc):
                        return 429, 0.0, 0
                    raise
                assert done, f"request {i} truncated"
                choice = {"finish_reason": events[-1]["choices"][0]["finish_reason"]}
                tokens = events[-1]["usage"]["completion_tokens"]
            assert choice["finish_reason"] in ("length", "stop")
            assert choice["finish_reason"] == "stop" or tokens == body["max_tokens"], f"request {i} truncated"
            return 200, time.perf_counter() - started, tokens

        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(client, range(200)))
        elapsed = time.perf_counter() - started
        assert len(results) == 200 and all(status in (200, 429) for status, _, _ in results)
        latencies = sorted(t for status, t, _ in results if status == 200)
        assert latencies, "every request was refused"
        tokens = sum(n for _, _, n in results)
        p50, p99 = statistics.median(latencies), latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        refused = sum(status == 429 for status, _, _ in results)
        print(f"\nload: 200 requests, 32 clients: {len(latencies)} answered, {refused} refused (429); "
              f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, {tokens / elapsed:.0f} tokens/s")
        stats = server.health()["batch"]
        assert stats["rejected"] == refused and stats["max_batch_seen"] <= 8 and stats["batch"] == 0
    finally:
        server.stop()


# -- other models, the command line --------------------------------------------------------------


def test_a_model_directory_is_served_on_torch_with_its_chat_template(tiny, tmp_path: Path) -> None:
    from gpt2reg.checkpoints import load_model
    from gpt2reg.generation import generate

    folder = shutil.copytree(tiny[0], tmp_path / "chatty")
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>"
        "{% endif %}", encoding="utf-8")
    model = load_model(folder)
    server = Server(folder, torch_ok=True)
    try:
        assert server.health()["backend"] == "torch cpu"
        prompts = ["A short one", "A somewhat longer prompt than that"]
        want = [s.text for s in generate(model, prompts, max_new_tokens=12, seed=5, num_samples=2)]
        barrier = threading.Barrier(2)

        def client(i: int) -> list[str]:
            barrier.wait()
            reply = server.post({"prompt": prompts[i], "max_tokens": 12, "seed": 5, "n": 2}).json()
            return [c["text"] for c in reply["choices"]]

        with ThreadPoolExecutor(2) as pool:
            assert [t for texts in pool.map(client, range(2)) for t in texts] == want

        text = "Echoed through the torch engine"
        losses = eval_losses(model, get_tokenizer().encode(text))
        body = {"prompt": text, "echo": True, "max_tokens": 0, "logprobs": 1}
        check_echo(server.post(body).json()["choices"][0], text, losses, 1)
        events, _ = stream(server, body)
        check_echo(events[0]["choices"][0], text, losses, 1)

        messages = [{"role": "user", "content": "Hi"}]
        chat = server.post({"messages": messages, "max_tokens": 6, "seed": 2}, path="/v1/chat/completions").json()
        want = generate(model, "<user>Hi<assistant>", max_new_tokens=6, seed=2)[0]
        assert chat["choices"][0]["message"]["content"] == want.text
        assert chat["usage"]["prompt_tokens"] == len(get_tokenizer().encode("<user>Hi<assistant>"))
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime-int8"])
def test_the_engine_cache_grows_in_place_through_joins_leaves_and_copies(backend: str, tmp_path: Path) -> None:
    import torch

    from gpt2reg.model import GrowingKV
    from gpt2reg.ort.runtime import InPlaceKV, onnx_engine
    from gpt2reg.torch_backend import torch_engine

    model = build_model(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=96, init_std=0.2, seed=0)
    if backend == "torch":
        engine = torch_engine(model)

        def alone(row: list[int]) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.tensor([row]))[0, -1].numpy()

        def in_place() -> bool:
            return all(isinstance(p, GrowingKV) for p in engine.past)
    else:  # the quantized file's graph extends the cache in place (GroupQueryAttention)
        onnx_model = OnnxGPT(export_onnx(model, tmp_path / "m.onnx", quantize="int8"), provider="cpu")
        assert onnx_model.in_place
        engine = onnx_engine(onnx_model)

        def alone(row: list[int]) -> np.ndarray:
            return onnx_model.run(np.array([row]))[0][0, -1]

        def in_place() -> bool:
            return isinstance(engine.past, InPlaceKV)
    rows = [[1, 2, 3], [4, 5, 6, 7, 8]]
    # int8 MatMulNBits rounds its activations to int8: the ~1e-7 a batch's float kernels differ by can
    # flip one rounding and move logits by ~1e-2; a wrong row, position or pad moves them by ~1.
    atol = 1e-5 if backend == "torch" else 5e-2

    def check(logits: np.ndarray, first: int = 0) -> None:  # rows from ``first`` on, each alone, no cache
        np.testing.assert_allclose(logits, np.stack([alone(r) for r in rows[first:]]), rtol=1e-5, atol=atol)

    check(engine.add([rows[0], rows[1]], [1, 1]))
    for token in (9, 10):
        rows = [r + [token] for r in rows]
        check(engine.step([token] * len(rows)))
    assert in_place()  # steps write in place
    buffers = None if backend == "torch" else engine.past.buffers
    rows += [[11, 12], [11, 12]]  # joins: one prompt, two copies
    check(engine.add([[11, 12]], [2]), first=2)  # add returns the joining rows' logits
    rows = [r + [13] for r in rows]
    check(engine.step([13] * 4))
    engine.keep([1, 2])  # leaves
    rows = [rows[1] + [14], rows[2] + [14]]
    check(engine.step([14, 14]))
    assert in_place()
    if buffers is not None:  # the joining rows went into the room after the others, the leaving ones' places were filled
        assert all(a is b for a, b in zip(engine.past.buffers, buffers, strict=True))
    rows += [[15, 16, 17, 18, 19, 20, 21, 22]]  # one row one position shorter than the batch
    check(engine.add([rows[-1]], [1]), first=2)
    width = engine.width
    engine.keep([1, 2])  # a leading column no row uses: cutting it would move the whole cache
    rows = [rows[1] + [23], rows[2] + [23]]
    check(engine.step([23, 23]))
    assert engine.width == (width + 1 if backend != "torch" else width)  # torch's copy cuts it anyway
    engine.keep([0])  # the longest row leaves: half the columns go
    rows = [rows[0] + [24]]
    check(engine.step([24]))
    assert engine.width == len(rows[0]) and in_place()


def test_the_servers_onnxruntime_threads_sleep_between_operators(tiny) -> None:
    """Busy-waiting intra-op threads take the cores from the event loop and the sampler (see server.py)."""
    from gpt2reg.serve.server import _load_onnx

    options = _load_onnx(str(tiny[1]), "cpu", None).engine.backend.model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_server_opens_a_lane_per_16_sequences_on_a_multicore_cpu(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to 16 rows are cheapest as one batch (every step streams the weights), more get lanes of their own."""
    from gpt2reg.serve.server import _load_onnx

    def lanes(max_batch: int) -> int:
        return 1 + len(_load_onnx(str(tiny[1]), "cpu", None, None, max_batch).lanes)

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert [lanes(b) for b in (1, 16, 17, 32, 33)] == [1, 1, 2, 2, 3]
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # one core: nothing to overlap
    assert lanes(32) == 1


def test_the_mailbox_wakes_the_loop_once_for_what_was_posted_before_it_ran() -> None:
    import asyncio

    from gpt2reg.serve.app import Mailbox

    loop = asyncio.new_event_loop()
    wakeups = []
    call_soon_threadsafe = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *args: (wakeups.append(args), call_soon_threadsafe(*args))[1]
    mailbox, queues = Mailbox(loop), [asyncio.Queue() for _ in range(3)]
    try:
        poster = threading.Thread(target=lambda: [mailbox.post(queues[i % 3], i) for i in range(30)])
        poster.start()
        poster.join()
        assert len(wakeups) == 1  # 30 items, one wake-up
        loop.run_until_complete(asyncio.sleep(0))
        assert [[q.get_nowait() for _ in range(q.qsize())] for q in queues] == [list(range(k, 30, 3)) for k in range(3)]
        mailbox.post(queues[0], "next step")  # delivered: the next post wakes it again
        loop.run_until_complete(asyncio.sleep(0))
        assert len(wakeups) == 2 and queues[0].get_nowait() == "next step"
    finally:
        loop.close()
    with pytest.raises(RuntimeError):  # the loop is gone: the poster hears it (the batcher then cancels the job)
        mailbox.post(queues[0], "too late")


def test_an_export_without_kv_cache_is_served_too(tiny, tmp_path: Path) -> None:
    from gpt2reg.checkpoints import load_model

    path = export_onnx(load_model(tiny[0]), tmp_path / "full.onnx", kv_cache=False)
    prompts = ["One", "Two words more"]
    want = [s.text for s in OnnxGPT(path, provider="cpu").generate(prompts, max_new_tokens=6, seed=2, num_samples=2)]
    server = Server(path)
    try:
        reply = server.post({"prompt": prompts, "n": 2, "max_tokens": 6, "seed": 2}).json()
        assert [c["text"] for c in reply["choices"]] == want
    finally:
        server.stop()


def test_cli_refuses_bad_options_and_files(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in [(["--max-batch", "0"], "--max-batch"), (["--grace", "nan"], "--grace"),
                          (["--grace", "inf"], "--grace"), (["--port", "70000"], "--port"),
                          (["--api-key", " "], "--api-key"), (["--host", ""], "--host"),
                          (["--read-timeout", "0"], "--read-timeout")]:
        result = runner.invoke(cli, ["serve", "x.onnx", *args])
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(cli, ["serve", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 1 and "no such ONNX file" in result.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    port = str(free_port())
    run = subprocess.run([sys.executable, "-m", "gpt2reg", "serve", str(bad), "--port", port, "--provider", "cpu"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 1 and "cannot serve" in run.stderr and "Traceback" not in run.stderr


def test_the_chat_template_is_the_model_folders_own_else_plain(tmp_path: Path) -> None:
    from gpt2reg.errors import InputError
    from gpt2reg.serve.chat import PLAIN_TEMPLATE, find_chat_template
    from gpt2reg.serve.protocol import APIError

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    plain = find_chat_template(str(tmp_path / "model.onnx"))
    assert plain.text == PLAIN_TEMPLATE and plain.source == "plain"
    assert plain.render(messages) == "System: Be brief.\n\nUser: Hi\n\nAssistant:"
    (tmp_path / "onnx").mkdir()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}"
                                        "{% endfor %}{% if messages[0].role != 'system' %}"
                                        "{{ raise_exception('a system message comes first') }}{% endif %}"}]}))
    own = find_chat_template(str(tmp_path / "onnx" / "model.onnx"))  # the Hugging Face layout: onnx/ in the folder
    assert own.source == str(tmp_path / "tokenizer_config.json")
    assert own.render(messages) == "[system] Be brief.<|endoftext|>[user] Hi<|endoftext|>"
    with pytest.raises(APIError, match="a system message comes first"):
        own.render(messages[1:])
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(InputError, match="does not compile"):
        find_chat_template(str(tmp_path)).check()


# -- the page in a real browser ------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (it reads fd 3, writes fd 4):
    JSON messages separated by NUL bytes, so no websocket client or driver is needed."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def wire() -> None:  # in the child: our pipe ends become its fds 3 and 4
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen([executable, *flags], preexec_fn=wire, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._id = 0

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close")
        except (OSError, AssertionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:  # events arrive too; skip to our answer
            while b"\0" not in self._buffer:
                data = os.read(self._in, 1 << 16)
                assert data, "Chromium closed the DevTools pipe"
                self._buffer += data
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", url=url)["targetId"]
        return Page(self, self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"])


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def evaluate(self, expression: str):
        result = self.browser.send("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def type(self, text: str) -> None:
        self.browser.send("Input.insertText", self.session, text=text)

    def wait_for(self, condition: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(condition):
            assert time.monotonic() < deadline, f"timed out waiting for {condition}"
            time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium is not installed (apt-get install chromium)")
def test_the_page_streams_a_completion_in_headless_chromium(server: Server, reference: OnnxGPT, tmp_path: Path) -> None:
    prompt = "Hello from the browser"
    want = reference.generate(prompt, max_new_tokens=20, seed=11)[0].text
    with Browser(CHROMIUM, tmp_path / "profile") as browser:
        page = browser.open(server.url)
        page.wait_for("location.protocol === 'http:' && document.readyState === 'complete'")  # not about:blank
        page.evaluate("document.getElementById('prompt').focus()")
        page.type(prompt)
        page.evaluate(f"""(() => {{
            for (const [id, v] of [['max_tokens', 20], ['seed', 11], ['key', '{KEY}']]) document.getElementById(id).value = v;
            document.getElementById('generate').click(); }})()""")
        page.wait_for("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'")
        status = page.evaluate("document.getElementById('status').textContent")
        assert page.evaluate("document.body.dataset.state") == "done", status
        assert page.evaluate("document.getElementById('completion').textContent") == want
        assert page.evaluate("document.getElementById('shown-prompt').textContent") == prompt
        assert "20 tokens" in status
