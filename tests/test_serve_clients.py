"""The clients people point at an OpenAI-compatible server, unchanged, against a real `gpt2reg serve`.

The official ``openai`` SDK (completions, chat, models), and lm-evaluation-harness's ``local-completions``
and ``local-chat-completions`` on four local tasks (multiple choice, loglikelihood, rolling
loglikelihood, generate_until) with local JSON data: lm-eval's scores must equal the ones computed here
from gpt2reg's own eval API (``evaluate_tokens``) and generation on the same items. lm-eval runs in a
subprocess whose sockets may reach this machine only (a guard refuses any other address), with the
Hugging Face libraries offline: its tokenizer is the server's (``/tokenizer_info``, ``/tokenize``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_serve import CONFIG, Server

from gpt2reg.model import build_model
from gpt2reg.onnx import export_onnx
from gpt2reg.ort.runtime import OnnxGPT
from gpt2reg.serve.chat import PLAIN_TEMPLATE, ChatTemplate
from gpt2reg.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

# Exports that repeat a model reuse its trace (conftest.py).
pytestmark = pytest.mark.usefixtures("trace_each_model_once")
KEY = "clients-key"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, OnnxGPT]:
    path = export_onnx(build_model(**CONFIG, seed=0), tmp_path_factory.mktemp("clients") / "tiny.onnx")
    return path, OnnxGPT(path, provider="cpu")


@pytest.fixture(scope="module")
def server(tiny):
    server = Server(tiny[0], "--api-key", KEY, "--served-model-name", "tiny", "--served-model-name", "gpt2-tiny")
    yield server
    server.stop()


def total_loss(model: OnnxGPT, ids: list[int]) -> float:
    """Summed cross-entropy of ``ids[1:]`` given what precedes each, from ``gpt2reg eval``'s scoring."""
    from gpt2reg.training.eval import evaluate_tokens

    if len(ids) < 2:
        return 0.0
    result = evaluate_tokens(model, ids, batch_size=1)
    return result["loss"] * result["tokens"]


def loglikelihood(model: OnnxGPT, context: str, continuation: str) -> tuple[float, bool]:
    """log P(continuation | context) and whether it is the greedy continuation, as lm-eval splits the tokens
    (the context's trailing spaces go with the continuation; an empty context is ``<|endoftext|>``)."""
    encode = get_tokenizer().encode
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context:
        whole, context_ids = encode(context + continuation), encode(context)
        continuation_ids = whole[len(context_ids):]
    else:
        context_ids, continuation_ids = [EOT_ID], encode(continuation)
    ids = context_ids + continuation_ids
    logits = model.logits([ids])[0, len(context_ids) - 1 : -1]
    greedy = bool((logits.argmax(-1) == np.array(continuation_ids)).all())
    return -(total_loss(model, ids) - total_loss(model, context_ids)), greedy


# -- the openai SDK -------------------------------------------------------------------------------


def test_the_openai_sdk_completes_chats_and_lists_models(server: Server, tiny) -> None:
    import openai
    from openai import OpenAI

    reference = tiny[1]
    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny", "gpt2-tiny"]
    card = client.models.retrieve("gpt2-tiny")
    assert card.id == "gpt2-tiny" and card.object == "model" and card.owned_by == "gpt2reg"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")

    want = reference.generate("Hello, my dog", max_new_tokens=10, seed=3, num_samples=2, top_p=0.9)
    reply = client.completions.create(model="gpt2-tiny", prompt="Hello, my dog", max_tokens=10, seed=3, n=2, top_p=0.9)
    assert [c.text for c in reply.choices] == [s.text for s in want] and reply.model == "tiny"
    scored = client.completions.create(model="tiny", prompt="Hello, my dog", max_tokens=0, echo=True, logprobs=1)
    logprobs = scored.choices[0].logprobs
    assert scored.choices[0].text == "Hello, my dog" and logprobs.token_logprobs[0] is None
    assert -sum(logprobs.token_logprobs[1:]) == pytest.approx(total_loss(reference, get_tokenizer().encode(
        "Hello, my dog")), abs=1e-4)

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]
    prompt = ChatTemplate(PLAIN_TEMPLATE, "plain").render(messages)
    want = reference.generate(prompt, max_new_tokens=12, seed=5, num_samples=2, stop=["\n"])
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=5, n=2, stop=["\n"],
                                          logprobs=True, top_logprobs=2)
    assert [c.message.content for c in chat.choices] == [s.text for s in want]
    assert [c.message.role for c in chat.choices] == ["assistant"] * 2
    assert chat.usage.completion_tokens == sum(len(s.generated_ids) for s in want)
    assert all(len(t.top_logprobs) == 2 for c in chat.choices for t in c.logprobs.content)

    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=5, n=2,
                                                 stop=["\n"], stream=True, stream_options={"include_usage": True}))
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [s.text for s in want] and chunks[-1].usage.total_tokens == chat.usage.total_tokens
    finished = {c.index: c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason}
    assert finished == {i: c.finish_reason for i, c in enumerate(chat.choices)}


# -- lm-evaluation-harness -----------------------------------------------------------------------

# lm-eval in its own process: sockets to this machine only; its scores and samples as JSON.
LM_EVAL = r"""
import ipaddress, json, socket, sys

def local_only(host):
    if host in ("localhost", None):
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise OSError(f"network access to {host} refused: this run must stay on this machine")

real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
socket.getaddrinfo = lambda host, *a, **k: (local_only(host), real_getaddrinfo(host, *a, **k))[1]
socket.socket.connect = lambda self, address: (local_only(address[0]), real_connect(self, address))[1]

import lm_eval
from lm_eval.tasks import TaskManager
from lm_eval.utils import make_table

spec = json.loads(sys.argv[1])
tasks = TaskManager(include_path=spec["tasks"], include_defaults=False)
out = {}
for run in spec["runs"]:
    result = lm_eval.simple_evaluate(model=run["model"], model_args=run["model_args"], tasks=run["tasks"],
                                     task_manager=tasks, limit=spec["limit"], bootstrap_iters=0, log_samples=True,
                                     apply_chat_template=run["chat"])
    print(make_table(result), flush=True)
    out[run["model"]] = {"results": result["results"], "samples": result["samples"]}
with open(spec["out"], "w") as f:
    json.dump(out, f, default=str)
"""

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
target_delimiter: ""
"""

TASKS = {
    "gpt2reg_mc": ("""output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
""", [{"question": "The capital of France is", "choices": [" Paris", " London", " a dog"], "answer": 0},
      {"question": "Two plus two is", "choices": [" four", " five"], "answer": 0},
      {"question": "The sky is", "choices": [" blue", " green", " made of cheese"], "answer": 1},
      {"question": "Cats like to", "choices": [" sleep", " bark"], "answer": 0}]),
    "gpt2reg_ll": ("""output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{continuation}}"
metric_list:
  - metric: perplexity
  - metric: acc
""", [{"context": "Hello, my name", "continuation": " is John"},
      {"context": "Once upon a ", "continuation": "time"},
      {"context": "x", "continuation": " y z"},
      {"context": "The meaning of life", "continuation": None}]),  # None: the model's own greedy continuation
    "gpt2reg_rolling": ("""output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""", [{"text": "The quick brown fox jumps over the lazy dog."},
      {"text": "A second, longer document, with a few more words in it to score."}]),
    "gpt2reg_gen": ("""output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
""", [{"question": "Q: What is one plus one?\nA:", "answer": None},  # None: the model's own greedy answer
      {"question": "Q: Say hi.\nA:", "answer": "hi"}]),
}


def generated(model: OnnxGPT, prompt: str) -> str:
    """The greedy text lm-eval's generate_until asks for: 8 tokens, until a newline or end-of-text."""
    return model.generate(prompt, max_new_tokens=8, greedy=True, stop=["\n", EOT_TOKEN])[0].text


def test_lm_eval_scores_equal_our_own_computation(server: Server, tiny, tmp_path: Path) -> None:
    reference = tiny[1]
    folder = tmp_path / "tasks"
    folder.mkdir()
    docs = {}
    for name, (config, items) in TASKS.items():
        items = [dict(item) for item in items]
        for item in items:  # planted: the model's own greedy answers, so there is a hit to find
            if "answer" in item and item["answer"] is None:
                item["answer"] = generated(reference, item["question"])
            if "continuation" in item and item["continuation"] is None:
                item["continuation"] = reference.generate(item["context"], max_new_tokens=3, greedy=True)[0].text
        docs[name] = items
        data = folder / f"{name}.json"
        data.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(TASK.format(name=name, data=data) + config, encoding="utf-8")
    base = f"{server.url}/v1"
    common = f"model=tiny,max_length=1024,auth_token={KEY},max_retries=1,timeout=60"
    spec = {"tasks": str(folder), "limit": 10, "out": str(tmp_path / "out.json"), "runs": [
        {"model": "local-completions", "model_args": f"base_url={base}/completions,{common}",
         "tasks": list(TASKS), "chat": False},
        {"model": "local-chat-completions", "model_args": f"base_url={base}/chat/completions,{common}",
         "tasks": ["gpt2reg_gen"], "chat": True},
    ]}
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "HF_HOME": str(tmp_path / "hf"), "OPENAI_API_KEY": KEY, "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-c", LM_EVAL, json.dumps(spec)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    # With the hub out of reach, lm-eval's tokenizer can only be the server's (/tokenizer_info, /tokenize).
    assert run.returncode == 0, run.stderr[-4000:]
    print(run.stdout)
    out = json.loads((tmp_path / "out.json").read_text())
    completions, chat = out["local-completions"], out["local-chat-completions"]
    results, samples = completions["results"], completions["samples"]

    def arguments(sample: dict) -> list[tuple[str, str]]:
        return [(a[0][0] if isinstance(a[0], list) else a[0], a[1]) for a in sample["arguments"]]  # a chat's: JSON

    # multiple choice: each choice's log-likelihood, then accuracy
    correct = []
    for sample in samples["gpt2reg_mc"]:
        ours = [loglikelihood(reference, *pair) for pair in arguments(sample)]
        np.testing.assert_allclose([ll for ll, _ in sample["filtered_resps"]], [o[0] for o in ours], rtol=1e-5,
                                   atol=1e-4)
        assert [greedy for _, greedy in sample["filtered_resps"]] == [o[1] for o in ours]
        correct.append(int(np.argmax([o[0] for o in ours]) == sample["doc"]["answer"]))
    assert len(correct) == len(docs["gpt2reg_mc"])
    assert results["gpt2reg_mc"]["acc,none"] == pytest.approx(np.mean(correct))

    # loglikelihood: perplexity over the items and whether each continuation is the greedy one
    ours = [loglikelihood(reference, *arguments(sample)[0]) for sample in samples["gpt2reg_ll"]]
    assert len(ours) == len(docs["gpt2reg_ll"])
    assert [s["filtered_resps"][0][1] for s in samples["gpt2reg_ll"]] == [o[1] for o in ours]
    np.testing.assert_allclose([s["filtered_resps"][0][0] for s in samples["gpt2reg_ll"]], [o[0] for o in ours],
                               rtol=1e-5, atol=1e-4)
    assert results["gpt2reg_ll"]["perplexity,none"] == pytest.approx(math.exp(-np.mean([o[0] for o in ours])),
                                                                      rel=1e-4)
    assert results["gpt2reg_ll"]["acc,none"] == pytest.approx(np.mean([o[1] for o in ours])) == 0.25

    # rolling: each document after <|endoftext|>, word and byte perplexities and bits per byte
    texts = [sample["doc"]["text"] for sample in samples["gpt2reg_rolling"]]
    assert sorted(texts) == sorted(d["text"] for d in docs["gpt2reg_rolling"])
    lls = [-total_loss(reference, [EOT_ID] + get_tokenizer().encode(text)) for text in texts]
    words = sum(len(text.split()) for text in texts)
    size = sum(len(text.encode()) for text in texts)
    rolling = results["gpt2reg_rolling"]
    assert rolling["word_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-4)
    assert rolling["byte_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / size), rel=1e-4)
    assert rolling["bits_per_byte,none"] == pytest.approx(-sum(lls) / size / math.log(2), rel=1e-4)

    # generate_until: greedy text until a newline, through completions and through chat (the plain template)
    for run_out, prompt_of in [(completions, lambda context: context),
                               (chat, lambda context: ChatTemplate(PLAIN_TEMPLATE, "plain").render(json.loads(context)))]:
        hits = []
        for sample in run_out["samples"]["gpt2reg_gen"]:
            text = generated(reference, prompt_of(arguments(sample)[0][0]))
            assert sample["resps"] == [[text]]
            hits.append(text == sample["doc"]["answer"])
        assert len(hits) == 2 and run_out["results"]["gpt2reg_gen"]["exact_match,none"] == pytest.approx(np.mean(hits))
    assert completions["results"]["gpt2reg_gen"]["exact_match,none"] == 0.5  # the planted answer was found
