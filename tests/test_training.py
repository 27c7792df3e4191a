"""Training: data, schedule, optimizer groups, a tiny run end to end, and bad input through the CLI.

The kill-and-resume and torchrun tests are in test_training_resume.py and test_training_ddp.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gpt2reg.cli import cli
from gpt2reg.config import GPTConfig
from gpt2reg.errors import ConfigError, InputError
from gpt2reg.tokenizer import EOT_ID, get_tokenizer
from gpt2reg.training import TrainConfig, train
from gpt2reg.training.data import (
    TokenData,
    cache_tokens,
    read_documents,
    tokenize_documents,
    unigram_entropy,
    unigram_loss,
)
from gpt2reg.training.optim import lr_at, make_optimizer

# Training needs the tokenizer's full vocabulary; everything else stays tiny so a step takes milliseconds.
TRAIN_TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
VERSE = "The woods are lovely, dark and deep,\nBut I have promises to keep,\nAnd miles to go before I sleep.\n"


def write_corpus(path: Path, repeats: int = 40) -> Path:
    path.write_text(VERSE * repeats, encoding="utf-8")
    return path


# -- data ------------------------------------------------------------------------------------------
def test_documents_split_on_endoftext_and_each_ends_with_eot(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first poem<|endoftext|>second poem")
    (tmp_path / "b.txt").write_text("third poem")
    (tmp_path / ".hidden").write_text("never read")
    docs = read_documents(tmp_path)
    assert docs == ["first poem", "second poem", "third poem"]
    tokens = tokenize_documents(docs)
    assert tokens.dtype == np.uint16
    tok = get_tokenizer()
    expected = []
    for doc in docs:
        expected += tok.encode_ordinary(doc) + [EOT_ID]
    assert tokens.tolist() == expected


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.txt", "no such file"),
        (lambda d: (d / "e.txt").write_text("  \n\n") and d / "e.txt", "empty"),
        (lambda d: (d / "x.bin").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe") and d / "x.bin", "not UTF-8"),
        (lambda d: (d / "n.txt").write_bytes(b"abc\x00def") and d / "n.txt", "binary"),
    ],
    ids=["missing", "empty", "not-utf8", "nul-bytes"],
)
def test_bad_corpus_is_a_clear_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_documents(make(tmp_path))


def test_token_cache_is_reused_until_the_corpus_changes(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.txt", repeats=2)
    first = cache_tokens(corpus, tmp_path / "run")
    stamp = first.stat().st_mtime_ns
    assert cache_tokens(corpus, tmp_path / "run").stat().st_mtime_ns == stamp
    corpus.write_text(VERSE * 3)
    again = cache_tokens(corpus, tmp_path / "run")
    assert again.stat().st_size == 2 * len(tokenize_documents([VERSE * 3]))
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_batches_are_a_function_of_seed_step_micro_and_rank() -> None:
    data = TokenData(np.arange(1000, dtype=np.uint16), seq_len=16, val_fraction=0.1, seed=3)
    x, y = data.batch(4, step=5)
    assert x.shape == y.shape == (4, 16) and x.dtype == np.int64
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    assert x.max() < 900  # never reads into the validation tail
    assert (data.batch(4, step=5)[0] == x).all()
    for other in (dict(step=6), dict(step=5, micro=1), dict(step=5, rank=1)):
        assert not (data.batch(4, **other)[0] == x).all()
    vx, vy = data.val_windows(limit=100)
    assert vx.min() >= 900 and (vx == data.val_windows(limit=100)[0]).all()


def test_a_corpus_too_small_for_one_window_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="too few"):
        TokenData(np.arange(20, dtype=np.uint16), seq_len=32)
    with pytest.raises(InputError, match="validation part"):
        TokenData(np.arange(200, dtype=np.uint16), seq_len=32, val_fraction=0.1)


def test_unigram_baselines() -> None:
    assert unigram_entropy(np.array([1, 1, 2, 2], dtype=np.uint16)) == pytest.approx(math.log(2))
    train, val = np.array([1, 1, 1, 2] * 50), np.array([1, 1, 1, 2])
    loss = unigram_loss(train, val, vocab_size=4)
    exact = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # the training frequencies match val's exactly
    assert exact < loss < exact + 0.01
    assert unigram_loss(train, np.array([3, 3]), vocab_size=4) > 5  # unseen tokens: only smoothing mass


# -- optimizer and schedule ---------------------------------------------------------------------
def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr() -> None:
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, **kw) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lr_at(110, **kw) == pytest.approx(0.1)


def test_weight_decay_applies_to_matrices_only() -> None:
    from gpt2reg.model import GPT

    model = GPT(GPTConfig(**TRAIN_TINY))
    opt = make_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert model.wte.weight in decayed["params"]
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_the_training_sample_comes_from_generate_and_leaves_the_run_as_it_was() -> None:
    """The sample drawn at each evaluation is ``generate``'s (one sampler), and leaves the training mode
    and torch's random state as they were."""
    from gpt2reg.generation import generate
    from gpt2reg.model import build_model
    from gpt2reg.training.sample import sample_text

    model = build_model(GPTConfig(**{**TRAIN_TINY, "vocab_size": 50257}), seed=0).train()
    state = torch.get_rng_state()
    text = sample_text(model, "Hello", 12, seed=3)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    ids = get_tokenizer().encode_ordinary("Hello")
    assert text == "Hello" + generate(model, ids, max_new_tokens=12, temperature=0.8, top_k=50, seed=3)[0].text


# -- a whole run ---------------------------------------------------------------------------------
def tiny_run(tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(data=str(write_corpus(tmp_path / "corpus.txt")), out_dir=str(tmp_path / "run"), max_steps=30,
                    batch_size=4, seq_len=32, lr=3e-3, warmup_steps=3, eval_interval=15, eval_batches=2,
                    sample_tokens=8, progress=False)
    return TrainConfig(**{**settings, **overrides})


def test_tiny_run_learns_and_leaves_a_complete_run_folder(tmp_path: Path) -> None:
    from gpt2reg.checkpoints import load_model

    config = tiny_run(tmp_path)
    result = train(config, GPTConfig(**TRAIN_TINY, pos="rope"))
    run = Path(config.out_dir)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert records[-1]["loss"] < records[0]["loss"] - 1.0  # a repeated verse is easy to learn
    assert [r["step"] for r in records if "val_loss" in r] == [15, 30]
    assert result["val_loss"] == records[-1]["val_loss"] and not result["interrupted"]
    assert result["tokens"] == 30 * 4 * 32 == records[-1]["tokens"]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "samples.txt").read_text().count("--- step") == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000015.pt", "step-000030.pt"]
    assert not list(run.rglob(".*"))  # no temporary file left anywhere
    model = load_model(run / "model")
    assert model.config.pos == "rope"
    saved = torch.load(run / "checkpoints" / "step-000030.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_gradient_accumulation_averages_the_micro_batches(tmp_path: Path) -> None:
    from gpt2reg.model import GPT
    from gpt2reg.training.data import TokenData, load_tokens

    config = tiny_run(tmp_path, max_steps=1, batch_size=2, grad_accum=3, dtype="float32", sample_tokens=0)
    result = train(config, GPTConfig(**TRAIN_TINY))
    torch.manual_seed(config.seed)
    model = GPT(GPTConfig(**TRAIN_TINY))  # the same initial weights: the run seeds its init the same way
    data = TokenData(load_tokens(tmp_path / "run" / "tokens.bin"), 32, config.val_fraction, config.seed)
    with torch.no_grad():
        losses = [model.loss(*(torch.from_numpy(a) for a in data.batch(2, 0, micro))).item() for micro in range(3)]
    assert result["loss"] == pytest.approx(sum(losses) / 3, rel=1e-5)
    assert result["tokens"] == 3 * 2 * 32


def test_the_log_records_what_the_run_saw(tmp_path: Path) -> None:
    from gpt2reg.training.data import TokenData, load_tokens
    from gpt2reg.training.loop import _arrays_digest

    config = tiny_run(tmp_path, max_steps=3, batch_size=2, grad_accum=2, eval_interval=3, sample_tokens=0)
    train(config, GPTConfig(**TRAIN_TINY))
    run = Path(config.out_dir)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    data = TokenData(load_tokens(run / "tokens.bin"), 32, config.val_fraction, config.seed)
    for step, record in enumerate(records):
        batches = [a for micro in range(2) for a in data.batch(2, step, micro)]
        assert record["batch_sha256"] == _arrays_digest(*batches)
    assert len({r["batch_sha256"] for r in records}) == 3
    val = json.loads((run / "run.json").read_text())["val_windows_sha256"]
    assert val == _arrays_digest(*data.val_windows(config.eval_batches * 2))


def test_a_non_finite_loss_ends_the_run_as_diverged(tmp_path: Path) -> None:
    config = tiny_run(tmp_path, lr=1e6, warmup_steps=0, grad_clip=0, sample_tokens=0)
    result = train(config, GPTConfig(**TRAIN_TINY))
    run = Path(config.out_dir)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert result["diverged"] and not result["interrupted"] and result["model_dir"] is None
    assert records[-1]["diverged"] is True and records[-1]["loss"] is None
    assert result["steps"] == records[-1]["step"] < 30
    assert all(math.isfinite(r["loss"]) for r in records[:-1])
    assert not (run / "model").exists()  # nothing saved from non-finite weights
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


def test_cli_reports_divergence_in_one_line(tmp_path: Path, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", str(corpus), "-o", "run", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
            "--block-size", "32", "--batch-size", "2", "--lr", "1e6", "--warmup-steps", "0", "--grad-clip", "0",
            "--sample-tokens", "0", "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "diverged at step" in result.output and "Traceback" not in result.output


def test_a_run_folder_is_never_reused_without_resume(tmp_path: Path) -> None:
    config = tiny_run(tmp_path, max_steps=1, sample_tokens=0)
    train(config, GPTConfig(**TRAIN_TINY))
    with pytest.raises(InputError, match="already holds a training run"):
        train(config, GPTConfig(**TRAIN_TINY))
    with pytest.raises(InputError, match="no training run"):
        train(config.replace(out_dir=str(tmp_path / "elsewhere")), resume=True)


def test_training_needs_the_tokenizer_vocabulary_and_a_fitting_window(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size=96"):
        train(tiny_run(tmp_path), GPTConfig(**TRAIN_TINY, vocab_size=96))
    with pytest.raises(ConfigError, match="seq_len=64"):
        train(tiny_run(tmp_path, seq_len=64), GPTConfig(**TRAIN_TINY))
    assert not (tmp_path / "run").exists()


def test_fine_tuning_starts_from_the_given_checkpoint(tmp_path: Path) -> None:
    from gpt2reg.checkpoints import save_model
    from gpt2reg.model import build_model

    base = build_model(GPTConfig(**TRAIN_TINY, act="swiglu"), seed=7)
    save_model(base, tmp_path / "base")
    config = tiny_run(tmp_path, max_steps=2, lr=1e-9, warmup_steps=0, sample_tokens=0)
    train(config, str(tmp_path / "base"))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["init"] == str(tmp_path / "base") and run["model"]["act"] == "swiglu"
    from gpt2reg.checkpoints import load_model

    tuned = load_model(tmp_path / "run" / "model")
    assert torch.allclose(tuned.wte.weight, base.wte.weight, atol=1e-6)  # tiny lr: barely moved from the init


# -- the command line: bad input is one line, and nothing is left behind ---------------------------
@pytest.mark.parametrize(
    "setup,extra,message",
    [
        (lambda d: None, ["--data", "nowhere.txt"], "no such file"),
        (lambda d: (d / "in.txt").write_text(""), ["--data", "in.txt"], "empty"),
        (lambda d: (d / "in.txt").write_bytes(bytes(range(256))), ["--data", "in.txt"], "not UTF-8"),
        (lambda d: write_corpus(d / "in.txt"), ["--data", "in.txt", "--batch-size", "100000000"], "does not fit"),
        (lambda d: write_corpus(d / "in.txt"), ["--data", "in.txt", "--pos", "rotary"], "unknown positional"),
    ],
    ids=["missing", "empty", "binary", "batch-too-large", "bad-component"],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, setup, extra, message) -> None:
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    args = ["train", *extra, "-o", "run", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_resume_takes_the_saved_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "in.txt")
    base = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "2",
            "--eval-interval", "2", "--sample-tokens", "0", "--no-progress", "--json"]
    first = CliRunner().invoke(cli, ["train", "--data", "in.txt", "-o", "run", "--max-steps", "2", *base])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, ["train", "-o", "run", "--resume", "--max-steps", "3", "--no-progress", "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert summary["steps"] == 3 and summary["tokens"] == 3 * 2 * 32
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["train"]
    assert settings["batch_size"] == 2 and settings["max_steps"] == 3 and Path(settings["data"]).is_absolute()
    refused = CliRunner().invoke(cli, ["train", "-o", "run", "--resume", "--n-layer", "2"])
    assert refused.exit_code == 1 and "n_layer (run: 1, given: 2)" in refused.output
    # The first command again, with --resume added: its options equal the saved ones, so it continues.
    rerun = CliRunner().invoke(cli, ["train", "--data", "in.txt", "-o", "run", "--max-steps", "4", *base, "--resume"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.output)["steps"] == 4
