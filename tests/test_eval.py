"""``gpt2reg eval``: sliding-window loss and perplexity agree with losses recomputed independently here."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from gpt2reg.cli import cli
from gpt2reg.config import GPTConfig
from gpt2reg.errors import ConfigError, InputError
from gpt2reg.model import build_model
from gpt2reg.testing import TINY
from gpt2reg.tokenizer import EOT_ID, get_tokenizer
from gpt2reg.training import evaluate, evaluate_tokens, sliding_windows


@pytest.fixture(scope="module")
def model():
    return build_model(GPTConfig(**{**TINY, "block_size": 16}), seed=0).eval()


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, TINY["vocab_size"], size=50)


def test_every_target_is_scored_exactly_once() -> None:
    for n, seq_len, stride in itertools.product(range(2, 30), range(1, 7), range(1, 7)):
        if stride > seq_len:
            continue
        scored = []
        for start, end, first in sliding_windows(n, seq_len, stride):
            assert end - start <= seq_len and start < first <= end + 1
            scored += range(first, end + 1)
        assert scored == list(range(1, n))


def test_one_window_equals_the_models_own_loss(model, tokens) -> None:
    short = tokens[:12]
    result = evaluate_tokens(model, short)
    x = torch.tensor(short[None, :-1])
    y = torch.tensor(short[None, 1:])
    assert result["tokens"] == 11
    assert result["loss"] == pytest.approx(model.loss(x, y).item(), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_stride_equal_to_window_is_independent_chunks(model, tokens) -> None:
    result = evaluate_tokens(model, tokens, seq_len=16, stride=16, batch_size=3)
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, 16):
        chunk = tokens[start : min(start + 17, len(tokens))]
        x, y = torch.tensor(chunk[None, :-1]), torch.tensor(chunk[None, 1:])
        total += model.loss(x, y).item() * y.numel()
        count += y.numel()
    assert result["tokens"] == count == len(tokens) - 1
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)


@torch.no_grad()
def test_stride_one_scores_each_token_from_the_full_window_before_it(model, tokens) -> None:
    window = 16
    result = evaluate_tokens(model, tokens, seq_len=window, stride=1, batch_size=7)
    nll = []
    for j in range(1, len(tokens)):  # token j given the (up to) `window` tokens before it, one forward each
        context = torch.tensor(tokens[None, max(0, j - window) : j])
        logits = model(context)[0, -1]
        nll.append(F.cross_entropy(logits[None], torch.tensor([int(tokens[j])])).item())
    assert result["loss"] == pytest.approx(float(np.mean(nll)), rel=1e-5)


def test_more_context_never_changes_the_token_count(model, tokens) -> None:
    counts = {evaluate_tokens(model, tokens, seq_len=8, stride=s)["tokens"] for s in (1, 3, 4, 8)}
    assert counts == {len(tokens) - 1}


def test_bad_settings_are_config_errors(model, tokens) -> None:
    with pytest.raises(ConfigError, match="stride"):
        evaluate_tokens(model, tokens, seq_len=8, stride=9)
    with pytest.raises(ConfigError, match="seq_len"):
        evaluate_tokens(model, tokens, seq_len=17)
    with pytest.raises(ConfigError, match="nothing to score"):
        evaluate_tokens(model, tokens[:1])
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        evaluate_tokens(model, [EOT_ID, 5, 7])


def test_cli_eval_on_a_text_file(tmp_path: Path) -> None:
    from gpt2reg.checkpoints import save_model

    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, pos="rope")
    net = build_model(config, seed=1).eval()
    save_model(net, tmp_path / "m")
    text = "Hope is the thing with feathers\nThat perches in the soul,\n"
    (tmp_path / "poem.txt").write_text(text)
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "m"), "--data", str(tmp_path / "poem.txt"), "--json",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    # Independently: <|endoftext|> as context, then the text and its closing <|endoftext|>, one forward pass.
    ids = [EOT_ID] + get_tokenizer().encode_ordinary(text) + [EOT_ID]
    with torch.no_grad():
        expected = net.loss(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])).item()
    assert got["tokens"] == len(ids) - 1
    assert got["loss"] == pytest.approx(expected, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_eval_of_an_empty_or_binary_file_is_a_clear_error(tmp_path: Path, model) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="empty"):
        evaluate(model, tmp_path / "empty.txt")
    (tmp_path / "blob").write_bytes(b"\xff\xfe\x00\x01")
    result = CliRunner().invoke(cli, ["eval", "nowhere", "--data", str(tmp_path / "blob")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "not UTF-8" in result.output


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory) -> Path:
    from gpt2reg.onnx import export_onnx

    return export_onnx(model, tmp_path_factory.mktemp("eval") / "m.onnx")


@pytest.mark.parametrize("seq_len,stride,batch_size", [(16, 8, 8), (16, 16, 3), (8, 1, 5)])
def test_an_onnx_file_scores_the_same_windows_as_its_model(model, tokens, onnx_file, seq_len, stride,
                                                           batch_size) -> None:
    from gpt2reg.ort.runtime import OnnxGPT

    want = evaluate_tokens(model, tokens, seq_len=seq_len, stride=stride, batch_size=batch_size)
    got = evaluate_tokens(OnnxGPT(onnx_file, provider="cpu"), tokens, seq_len=seq_len, stride=stride,
                          batch_size=batch_size)
    assert {k: got[k] for k in ("tokens", "windows", "seq_len", "stride")} == \
        {k: want[k] for k in ("tokens", "windows", "seq_len", "stride")}
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    with pytest.raises(ConfigError, match="own precision"):
        evaluate_tokens(OnnxGPT(onnx_file, provider="cpu"), tokens, dtype="bfloat16")
