"""``gpt2reg export --format hf`` folders, run by each real consumer, greedy tokens equal to gpt2reg's own runtime.

Consumers: Hugging Face Optimum (``ORTModelForCausalLM.generate`` with and without IOBinding, the
transformers ``pipeline``), onnxruntime-genai (Python), transformers.js in Node (``text-generation``
pipeline and ``generate``), a plain onnxruntime-node program (``examples/node``) and transformers.js in
headless Chromium (``examples/web``). Each runs learned, RoPE and ALiBi (the example plugin) models and
an int8 file; a left-padded batch of two where the consumer batches. The models are tiny but have the
real GPT-2 vocabulary and weights scaled up (init_std 0.25) so that the greedy path varies.

The folders are exported once per test run through the CLI (validation included), shared by the
xdist workers under a file lock. The consumers are installed by ``make install`` (pip, npm, apt);
where one is missing its tests skip and say which.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from filelock import FileLock

from gpt2reg.checkpoints import save_model
from gpt2reg.cli import cli
from gpt2reg.model import build_model
from gpt2reg.ort.runtime import OnnxGPT
from gpt2reg.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "examples" / "node"
PROMPTS = ["Hello, my dog", "In a hole in the ground there lived"]  # 4 and 9 tokens: a left-padded batch
NEW = 12
VARIANTS = {  # folder name -> (build_model overrides, export options)
    "learned": ({"pos": "learned"}, []),
    "rope": ({"pos": "rope"}, []),
    "alibi": ({"pos": "alibi"}, []),  # gpt2reg-alibi, the example third-party plugin
    "rope-int8": ({"pos": "rope"}, ["--quantize", "int8"]),
}
TINY_REAL_VOCAB = dict(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=50257, init_std=0.25)
# Exports that repeat a model reuse its trace (conftest.py).
pytestmark = pytest.mark.usefixtures("trace_each_model_once")


def _export(root: Path, name: str) -> dict:
    """Build, save and export one variant with the CLI; the expected tokens from gpt2reg's runtime."""
    overrides, options = VARIANTS[name]
    model = build_model(**TINY_REAL_VOCAB, **overrides, seed=3)
    save_model(model, root / f"model-{name}", force=True)
    result = CliRunner().invoke(cli, ["export", str(root / f"model-{name}"), "--format", "hf", "-o", str(root / name),
                                      "--cases", "2", "--provider", "cpu", "--json", *options])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    runtime = OnnxGPT(report["onnx"], provider="cpu")
    batch = [s.generated_ids for s in runtime.generate(PROMPTS, max_new_tokens=NEW, greedy=True, eos_token_id=None)]
    alone = [runtime.generate(p, max_new_tokens=NEW, greedy=True, eos_token_id=None)[0].generated_ids for p in PROMPTS]
    assert batch == alone  # the left-padded batch decodes each prompt as alone
    assert all(len(set(ids)) > 3 for ids in batch), batch  # a greedy path worth comparing
    text = [get_tokenizer().decode(ids) for ids in batch]
    return {"folder": str(root / name), "onnx": report["onnx"], "ids": batch, "text": text}


class _Exports:
    """Each variant's folder and expected tokens, exported on first use, once for all xdist workers
    (a lock per variant, so two workers export two variants at once)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __getitem__(self, name: str) -> dict:
        done = self.root / f"{name}.json"
        with FileLock(str(self.root / f"{name}.lock")):
            if not done.exists():
                done.write_text(json.dumps(_export(self.root, name)))
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> _Exports:
    root = tmp_path_factory.getbasetemp().parent / "export-elsewhere"
    root.mkdir(exist_ok=True)
    return _Exports(root)


# ---------------------------------------------------------------------------------------------- files

def test_tokenizer_json_encodes_and_decodes_as_tiktoken() -> None:
    from tokenizers import Tokenizer

    from gpt2reg.hf_tokenizer import tokenizer_json

    hf, tiktoken = Tokenizer.from_str(tokenizer_json()), get_tokenizer()
    texts = ["Hello, my dog", "  leading  spaces\tand\ttabs\n\n\nnewlines  ", "naïve café — “quotes” 日本語 한국어 🤖🎉",
             "I'm you're we'll they've it's DON'T 'quoted'", "x<|endoftext|>y <|endoftext|> z<|endoftext|>",
             "1234567 3.14159 -42 1e-9", "", " ", "\n", "a\u00a0b\u200bc\u3000d", "ĠĠ weird Ġ chars ĊĊ",
             "emoji 👩\u200d👩\u200d👧\u200d👦 family", "tabs\t\t\tend   ", "def f(x):\n    return x ** 2\n",
             "<|endoftext|>", "<|endoftext", "ÀÉÎÕÜ ßøå Ωμέγα Привет мир"]
    for text in texts:
        want = tiktoken.encode(text, allowed_special="all")
        assert hf.encode(text).ids == want, text
        assert hf.decode(want, skip_special_tokens=False) == text


def test_folder_holds_what_each_consumer_reads(exports) -> None:
    fp32, int8 = Path(exports["rope"]["folder"]), Path(exports["rope-int8"]["folder"])
    for folder in (fp32, int8):
        assert {p.name for p in folder.iterdir()} == {"config.json", "generation_config.json", "tokenizer.json",
                                                      "tokenizer_config.json", "genai_config.json", "README.md", "onnx"}
    assert [p.name for p in (fp32 / "onnx").iterdir()] == ["model.onnx"]
    assert [p.name for p in (int8 / "onnx").iterdir()] == ["model_quantized.onnx"]  # transformers.js's q8 name
    config = json.loads((fp32 / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] == 2 and config["n_head"] == 2
    assert "activation_function" not in config  # RoPE is no GPT-2: only the cache's shape is claimed
    assert config["gpt2reg"]["config"]["pos"] == "rope" and config["gpt2reg"]["validation"]["max_abs_diff"] < 1e-4
    assert config["transformers.js_config"]["dtype"] == "fp32"
    assert json.loads((int8 / "config.json").read_text())["transformers.js_config"]["dtype"] == "q8"
    learned = json.loads((Path(exports["learned"]["folder"]) / "config.json").read_text())
    assert learned["activation_function"] == "gelu_new"  # a plain GPT-2: transformers' full config
    # genai shares past and present buffers only where the graph writes the cache in place
    assert json.loads((fp32 / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is False
    assert json.loads((int8 / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is True
    card = (fp32 / "README.md").read_text()
    assert "max |logit difference|" in card and "ORTModelForCausalLM" in card and "onnxruntime_genai" in card
    graph = onnx.load(exports["rope"]["onnx"]).graph
    assert "logits_to_keep" not in {i.name for i in graph.input}  # Optimum refuses inputs it does not know
    logits = next(o for o in graph.output if o.name == "logits")
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["batch_size", "sequence_length", 50257]


def test_onnxruntime_loads_the_folders_file_without_a_warning(exports) -> None:
    code = f"import onnxruntime as ort; ort.InferenceSession({exports['rope-int8']['onnx']!r}, providers=['CPUExecutionProvider'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stderr.strip() == "", run.stderr


def test_a_second_export_replaces_the_first_and_a_small_vocabulary_is_refused(exports, tmp_path: Path) -> None:
    first = Path(exports["learned"]["folder"]).parent / "model-learned"
    folder = tmp_path / "again"
    for options in ([], ["--dtype", "fp16"]):  # the second writes over the first without --force
        result = CliRunner().invoke(cli, ["export", str(first), "--format", "hf", "-o", str(folder), "--no-validate", *options])
        assert result.exit_code == 0, result.output
    assert [p.name for p in (folder / "onnx").iterdir()] == ["model_fp16.onnx"]  # the fp32 file went
    assert json.loads((folder / "config.json").read_text())["transformers.js_config"]["dtype"] == "fp16"
    small = tmp_path / "small"
    save_model(build_model(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=96), small)
    result = CliRunner().invoke(cli, ["export", str(small), "--format", "hf", "-o", str(tmp_path / "no")])
    assert result.exit_code != 0 and "smaller than the GPT-2 tokenizer" in result.output
    assert not (tmp_path / "no").exists()
    result = CliRunner().invoke(cli, ["export", str(small), "--format", "hf", "--no-kv-cache", "-o", str(tmp_path / "no")])
    assert result.exit_code == 2 and "drop --no-kv-cache" in result.output


# ----------------------------------------------------------------------------------- Python consumers

@pytest.mark.parametrize("name", list(VARIANTS))
def test_optimum_generate_and_pipeline(exports, name: str) -> None:
    pytest.importorskip("optimum.onnxruntime", reason="optimum-onnx is not installed (make install)")
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer, pipeline

    folder, want = exports[name]["folder"], exports[name]["ids"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)  # left padding, from tokenizer_config.json
    assert inputs.attention_mask[0, 0] == 0
    for io_binding in (False, True):
        model = ORTModelForCausalLM.from_pretrained(folder, use_io_binding=io_binding)
        out = model.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False)
        assert out[:, inputs.input_ids.shape[1]:].tolist() == want, f"use_io_binding={io_binding}"
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    got = generator(PROMPTS[0], max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, return_full_text=False)
    assert got[0]["generated_text"] == exports[name]["text"][0]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_onnxruntime_genai(exports, name: str) -> None:
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (make install)")
    model = og.Model(exports[name]["folder"])
    tokenizer = og.Tokenizer(model)
    for prompt, want in zip(PROMPTS, exports[name]["ids"], strict=True):
        ids = tokenizer.encode(prompt)
        assert list(ids) == get_tokenizer().encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + NEW, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        assert [int(t) for t in generator.get_sequence(0)][len(ids):] == want


# ------------------------------------------------------------------------------- JavaScript consumers

def _node(script: str, *args: str) -> list | dict:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip(f"the JavaScript packages are not installed: make js (npm ci in {NODE_DIR})")
    run = subprocess.run(["node", str(NODE_DIR / script), *args], capture_output=True, text=True, timeout=300,
                         cwd=NODE_DIR)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_transformers_js_in_node(exports, name: str) -> None:
    got = _node("transformers_generate.mjs", exports[name]["folder"], str(NEW), *PROMPTS)
    assert got["ids"] == exports[name]["ids"]  # model.generate on the left-padded batch
    assert got["texts"] == exports[name]["text"]  # the text-generation pipeline, prompt by prompt


@pytest.mark.parametrize("name", list(VARIANTS))
def test_onnxruntime_node_example(exports, name: str) -> None:
    prompts = json.dumps([get_tokenizer().encode(p) for p in PROMPTS])
    assert _node("ort_generate.mjs", exports[name]["folder"], str(NEW), prompts) == exports[name]["ids"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("no Chromium (make browser: apt-get install chromium)")
    if not (NODE_DIR / "node_modules" / "onnxruntime-web" / "dist").is_dir():
        pytest.skip(f"the JavaScript packages are not installed: make js (npm ci in {NODE_DIR})")
    return found


@pytest.mark.parametrize("name", list(VARIANTS))
def test_browser_page_streams_the_same_tokens(exports, name: str) -> None:
    """examples/web in headless Chromium (WASM), served locally: the tokens it streamed equal the runtime's."""
    import importlib.util

    browser = _chromium()
    spec = importlib.util.spec_from_file_location("web_serve", ROOT / "examples" / "web" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    results: queue.Queue = queue.Queue()
    httpd = serve.server(Path(exports[name]["folder"]).parent, 0, results.put)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = (f"http://127.0.0.1:{httpd.server_port}/?model={name}&prompt={PROMPTS[1].replace(' ', '%20')}"
           f"&max_new_tokens={NEW}&device=wasm&autorun&report")
    with tempfile.TemporaryDirectory() as profile:
        chrome = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                   f"--user-data-dir={profile}", url],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": profile})
        try:
            result = results.get(timeout=180)
        finally:
            chrome.terminate()
            chrome.wait(timeout=30)
            httpd.shutdown()
    assert "error" not in result, result["error"]
    assert result["device"] == "wasm"
    assert result["ids"] == exports[name]["ids"][1] and result["text"] == exports[name]["text"][1]

