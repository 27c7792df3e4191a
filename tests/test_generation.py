"""Generation: KV cache vs recompute per positional encoding, parity with Hugging Face, sampling
filters on hand-built distributions, seeds, batching, stop strings, truncation, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gpt2reg
from gpt2reg.accel import hugepages, tune
from gpt2reg.errors import InputError
from gpt2reg.generation import (
    GenerationOptions,
    PromptTruncatedWarning,
    Sampler,
    TextStream,
    decode,
    draw,
    filter_logits,
    generate,
    probabilities,
)
from gpt2reg.testing import TINY, component_names
from gpt2reg.torch_backend import torch_engine

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]  # different lengths: left padding


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; two xdist workers with two threads each on two cores
    make every small op wait on an oversubscribed OpenMP barrier (the module ran ~6x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(pos: str = "learned", **overrides) -> gpt2reg.GPT:
    # init std 0.2, not GPT-2's 0.02: a 0.02 random model repeats one token, which would hide a wrong
    # position or a stale cache.
    return gpt2reg.build_model(**{**TINY, "pos": pos, "init_std": 0.2, **overrides}, seed=0).eval()


# -- the KV cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("pos", component_names("pos"))
def test_cached_decoding_equals_full_recompute(pos: str) -> None:
    """Teacher-forced decode of a left-padded batch whose rows join, copy and leave: the cache engine
    gives the logits of the recomputing engine, which runs each row alone, unpadded."""
    model = tune(tiny(pos))
    cached, full = torch_engine(model), torch_engine(model, use_cache=False)
    np.testing.assert_allclose(cached.add(PROMPTS, [1, 2, 1]), full.add(PROMPTS, [1, 2, 1]), atol=1e-4, rtol=0)
    rng = np.random.default_rng(0)
    for t in range(12):
        if t == 4:
            np.testing.assert_allclose(cached.add([[3, 4]], [1]), full.add([[3, 4]], [1]), atol=1e-4, rtol=0)
        if t == 8:
            cached.keep([0, 2, 4]), full.keep([0, 2, 4])
        tokens = rng.integers(0, TINY["vocab_size"], cached.rows).tolist()
        np.testing.assert_allclose(cached.step(tokens), full.step(tokens), atol=1e-4, rtol=0)
    np.testing.assert_allclose(cached.prompt_logits(PROMPTS[1]), full.prompt_logits(PROMPTS[1]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("pos", component_names("pos"))
def test_growing_cache_equals_concatenation(pos: str) -> None:
    """Unpadded decoding (no attention mask) with the in-place cache, across several regrowths, gives the
    logits of the concatenating cache; the cache keeps its objects and writes past the prompt in place."""
    from gpt2reg.model import GrowingKV

    model = tune(tiny(pos))
    ids = torch.randint(0, TINY["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want, tuples = model.forward_cached(ids[:, :3])
        got, _ = model.forward_cached(ids[:, :3])
        growing = [GrowingKV(k, v) for k, v in tuples]
        for t in range(3, ids.shape[1]):  # room for 3 keys, then 6, 12, 24
            want, tuples = model.forward_cached(ids[:, t : t + 1], tuples)
            got, presents = model.forward_cached(ids[:, t : t + 1], growing)
            assert all(a is b for a, b in zip(presents, growing, strict=True))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert growing[0][0].shape == tuples[0][0].shape == (2, TINY["n_head"], 20, TINY["n_embd"] // TINY["n_head"])
    torch.testing.assert_close(growing[-1][1], tuples[-1][1], rtol=1e-5, atol=1e-5)


def test_growing_cache_room_stops_at_the_context() -> None:
    """Doubling the room never reserves more than ``limit`` positions (the model's context), and a
    decode to the full context through ``generate`` ends with a cache of exactly that room."""
    from gpt2reg.model import GrowingKV

    cache = GrowingKV(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), limit=12)
    rooms = []
    for _ in range(7):
        cache.extend(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
        rooms.append(cache._keys.shape[2])
    assert rooms == [10, 10, 10, 10, 10, 12, 12] and cache[0].shape == (1, 2, 12, 4)
    assert torch.equal(cache[1][:, :, 5:], torch.ones(1, 2, 7, 4))

    model = tune(tiny("learned"))
    engine = torch_engine(model)
    block = model.config.block_size
    engine.add([[1, 2, 3]], [1])
    for _ in range(block - 3):
        engine.step([4])
    assert all(layer._keys.shape[2] == block for layer in engine.past)


# -- parity with Hugging Face -------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=3, n_head=4, n_embd=64, n_positions=128, vocab_size=512, initializer_range=0.2
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("hf")
    model.save_pretrained(directory)
    return model, directory


@pytest.mark.parametrize("prompt_len", [1, 30])
def test_greedy_matches_transformers_token_for_token(hf_model, prompt_len: int) -> None:
    hf, directory = hf_model
    ours = gpt2reg.load_model(directory)
    prompt = torch.randint(0, 512, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    with torch.no_grad():
        expected = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, min_new_tokens=64,
            do_sample=False, pad_token_id=0,
        )[0, prompt_len:].tolist()
    assert len(set(expected)) >= 10, "reference output too repetitive to catch a position or cache bug"
    got = generate(ours, prompt[0].tolist(), max_new_tokens=64, greedy=True, eos_token_id=None)
    assert got[0].generated_ids == expected


# -- sampling filters on hand-built distributions -----------------------------------------------

P4 = np.array([0.5, 0.3, 0.15, 0.05])
L4 = np.log(P4)


@pytest.mark.parametrize("top_p,kept", [(0.4, 1), (0.75, 2), (0.85, 3), (0.97, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_nucleus(top_p: float, kept: int) -> None:
    probs = probabilities(L4, GenerationOptions(top_p=top_p))
    expected = np.where(np.arange(4) < kept, P4, 0.0)
    np.testing.assert_allclose(probs, expected / expected.sum(), atol=1e-12)


def test_top_p_on_a_large_vocabulary_matches_a_full_sort() -> None:
    """The partial-sort shortcut must agree with the plain definition."""
    logits = np.random.default_rng(1).normal(size=(3, 5000)) * 3
    for top_p in (0.1, 0.5, 0.95, 0.999):
        got = np.isfinite(filter_logits(logits, GenerationOptions(top_p=top_p)))
        for row, kept in zip(logits, got, strict=True):
            p = np.exp(row - row.max())
            p /= p.sum()
            order = np.argsort(-p)
            n = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1
            assert set(np.flatnonzero(kept)) == set(order[:n].tolist())


def test_top_k_and_temperature() -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0, -1.0])
    kept = np.isfinite(filter_logits(logits, GenerationOptions(top_k=2)))
    assert kept.tolist() == [False, True, False, True, False]
    kept = np.isfinite(filter_logits(logits, GenerationOptions(top_k=3)))
    assert kept.tolist() == [False, True, True, True, False]
    for t in (0.5, 2.0):
        expected = np.exp(logits / t) / np.exp(logits / t).sum()
        np.testing.assert_allclose(probabilities(logits, GenerationOptions(temperature=t)), expected, rtol=1e-12)
    # temperature, then top-k, then top-p: at T=10 the top two are near-equal, so top-p 0.5 keeps both
    probs = probabilities(L4, GenerationOptions(temperature=10, top_k=3, top_p=0.5))
    assert (probs > 0).tolist() == [True, True, False, False]
    assert probabilities(logits, GenerationOptions(temperature=0)).tolist() == [0, 1, 0, 0, 0]


@pytest.mark.parametrize("vocab", [1, 255, 256, 257, 50257])
def test_draw_is_the_inverse_cdf(vocab: int) -> None:
    """The two-level draw picks what a running sum over the whole vocabulary picks (integer weights:
    every sum exact), and never a token of weight 0, even at the top of [0, 1)."""
    rng = np.random.default_rng(vocab)
    w = rng.integers(0, 4, vocab).astype(np.float64)
    w[rng.random(vocab) < 0.5] = 0
    w[-min(vocab - 1, 300):] = 0  # a tail of empty blocks
    w[0] = max(w[0], 1)
    cumulative = np.cumsum(w)
    for u in [*rng.random(500), 0.0, 1 - 2**-53, *(cumulative[:-1] / cumulative[-1])]:
        expected = min(int(np.searchsorted(cumulative, u * cumulative[-1], side="right")), vocab - 1)
        got = draw(w, u)
        assert w[got] > 0
        if w[expected] > 0:
            assert got == expected, (u, got, expected)


def test_sampler_draws_from_the_distribution() -> None:
    sampler = Sampler(GenerationOptions(), [0], seed=0)
    draws = [sampler(L4[None])[0] for _ in range(20000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, P4, atol=0.015)


@pytest.mark.parametrize(
    "options",
    [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0), dict(temperature=math.nan)],
)
def test_invalid_sampling_options(options: dict) -> None:
    with pytest.raises(InputError):
        GenerationOptions(**options)


# -- generate(): seeds, batching, stopping, truncation ------------------------------------------


def test_top_k_one_is_greedy() -> None:
    model = tiny()
    greedy = generate(model, PROMPTS, max_new_tokens=16, greedy=True)
    top1 = generate(model, PROMPTS, max_new_tokens=16, top_k=1, temperature=0.7, seed=5)
    assert [s.generated_ids for s in top1] == [s.generated_ids for s in greedy]


def test_seeds_reproduce_and_differ() -> None:
    model = tiny()
    a = generate(model, [5, 6], max_new_tokens=20, seed=1)[0]
    b = generate(model, [5, 6], max_new_tokens=20, seed=1)[0]
    c = generate(model, [5, 6], max_new_tokens=20, seed=2)[0]
    assert a.text == b.text and a.generated_ids == b.generated_ids
    assert a.generated_ids != c.generated_ids


@pytest.mark.parametrize("pos", component_names("pos"))
@pytest.mark.parametrize("sampling", [dict(greedy=True), dict(top_p=0.9, temperature=0.8, seed=3)])
def test_batched_equals_one_by_one(pos: str, sampling: dict) -> None:
    model = tiny(pos)
    batched = generate(model, PROMPTS, max_new_tokens=10, num_samples=2, **sampling)
    assert [(s.prompt_index, s.sample_index) for s in batched] == [(p, j) for p in range(3) for j in range(2)]
    for p, prompt in enumerate(PROMPTS):
        alone = generate(model, prompt, max_new_tokens=10, num_samples=2, **sampling)
        assert [s.generated_ids for s in alone] == [s.generated_ids for s in batched[2 * p : 2 * p + 2]]


def test_one_options_object_or_its_fields_as_keywords() -> None:
    """``generate`` takes a ``GenerationOptions``, its fields as keywords, or both (keywords win)."""
    model = tiny()
    options = GenerationOptions(top_p=0.9, temperature=0.8, max_new_tokens=8, seed=3, num_samples=2, stop="zz")
    assert options.stop == ("zz",) and GenerationOptions.of(options, seed=4).seed == 4
    by_object = generate(model, PROMPTS, options)
    by_keywords = generate(model, PROMPTS, top_p=0.9, temperature=0.8, max_new_tokens=8, seed=3, num_samples=2)
    assert [s.generated_ids for s in by_object] == [s.generated_ids for s in by_keywords]
    shorter = generate(model, PROMPTS, options, max_new_tokens=4)
    assert [s.generated_ids for s in shorter] == [s.generated_ids[:4] for s in by_object]
    with pytest.raises(InputError, match="stop strings"):
        GenerationOptions(stop=["ok", ""])
    with pytest.warns(DeprecationWarning, match="GenerationOptions"):
        from gpt2reg.generation import SamplingOptions  # the old name still works
    assert SamplingOptions is GenerationOptions


@pytest.mark.parametrize("pos", component_names("pos"))
def test_rows_that_finish_leave_and_the_others_decode_on_unchanged(pos: str) -> None:
    """A sequence ending early (end-of-text) leaves the batch (the engine drops its row and cuts the
    padding no row needs); every other sequence gets the tokens it gets when none ends."""
    model = tiny(pos)
    free = generate(model, PROMPTS, max_new_tokens=12, greedy=True, eos_token_id=None)
    # an end-of-text that ends some sequences early and not others
    eos = next(t for row in free for t in row.generated_ids[:8] if any(t not in r.generated_ids for r in free))
    ended = generate(model, PROMPTS, max_new_tokens=12, greedy=True, eos_token_id=eos)
    for a, b in zip(free, ended, strict=True):
        cut = a.generated_ids.index(eos) + 1 if eos in a.generated_ids else len(a.generated_ids)
        assert b.generated_ids == a.generated_ids[:cut]
    assert any(len(b.generated_ids) < 12 for b in ended) and any(len(b.generated_ids) == 12 for b in ended)


def test_samples_of_one_prompt_differ() -> None:
    samples = generate(tiny(), [5, 6], max_new_tokens=12, num_samples=3, seed=0)
    assert len({tuple(s.generated_ids) for s in samples}) == 3


def test_streaming_gives_the_same_text() -> None:
    model = tiny(vocab_size=50257)
    pieces: dict[int, str] = {}
    samples = generate(model, ["Hello", "A longer prompt"], max_new_tokens=15, seed=0,
                       stream=lambda i, t: pieces.__setitem__(i, pieces.get(i, "") + t))
    assert [pieces.get(i, "") for i in range(2)] == [s.text for s in samples]
    quiet = generate(model, ["Hello", "A longer prompt"], max_new_tokens=15, seed=0)
    assert [s.text for s in quiet] == [s.text for s in samples]


def test_stops_at_end_of_text_and_stop_strings() -> None:
    model = tiny(vocab_size=50257)
    free = generate(model, "Hello", max_new_tokens=20, greedy=True, eos_token_id=None)[0]
    assert free.finish_reason == "length" and len(free.generated_ids) == 20
    # pretend the 6th token is end-of-text: the sample ends there, the token kept, its text not
    eos = free.generated_ids[5]
    first = free.generated_ids.index(eos)
    ended = generate(model, "Hello", max_new_tokens=20, greedy=True, eos_token_id=eos)[0]
    assert ended.finish_reason == "eos" and ended.generated_ids == free.generated_ids[: first + 1]
    tok = gpt2reg.get_tokenizer()
    assert ended.text == tok.decode(free.generated_ids[:first])
    # a stop string from the middle of the text: cut before it
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    stopped = generate(model, "Hello", max_new_tokens=20, greedy=True, eos_token_id=None, stop=["@@never", stop])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert free.generated_ids[: len(stopped.generated_ids)] == stopped.generated_ids
    assert stop in tok.decode(stopped.generated_ids) and stop not in tok.decode(stopped.generated_ids[:-1])


def test_text_stream_holds_back_stop_prefixes_and_split_characters() -> None:
    table = {0: b"ab", 1: b"c E", 2: b"N", 3: b"D!", 4: b"\xc3", 5: b"\xa9", 6: b"E"}
    stream = TextStream(["END"], decode_bytes=table.__getitem__)
    assert stream.push(0) == "ab"
    assert stream.push(1) == "c "  # "E" might start "END"
    assert stream.push(4) == ""  # half a character
    assert stream.push(5) == "Eé"  # "E" followed by "é" is not "END"
    assert stream.push(6) == ""  # "E" again
    assert stream.push(2) == "" and not stream.stopped  # "EN"
    assert stream.push(3) == "" and stream.stopped
    assert stream.finish() == "" and stream.text == "abc Eé"  # cut where "END" starts
    unfinished = TextStream(["END"], decode_bytes=table.__getitem__)
    assert unfinished.push(1) + unfinished.push(4) + unfinished.finish() == "c E\ufffd"


def test_long_prompt_keeps_its_most_recent_tokens() -> None:
    model = tiny()
    prompt = list(range(1, 61))  # context 64, 10 new tokens: 54 fit
    with pytest.warns(PromptTruncatedWarning, match="kept the last 54"):
        long = generate(model, prompt, max_new_tokens=10, greedy=True)[0]
    assert long.prompt_ids == prompt[-54:]
    assert long.generated_ids == generate(model, prompt[-54:], max_new_tokens=10, greedy=True)[0].generated_ids


@pytest.mark.parametrize(
    "prompt,kwargs,message",
    [
        ("", {}, "empty"),
        ([], {}, "no prompt"),
        ([[1, 2], []], {}, "prompt 2 is empty"),
        ([1, 200], {}, "outside the model's vocabulary"),
        ([1, 2], {"max_new_tokens": 64}, "no room"),
        ([1, 2], {"max_new_tokens": 0}, "max_new_tokens=0: must be an integer >= 1"),
        ([1, 2], {"num_samples": 0}, "num_samples"),
        ([1, 2], {"top_p": 2.0}, "top_p"),
        ([1, 2], {"seed": -1, "max_new_tokens": 4}, "seed"),
    ],
)
def test_invalid_input_is_a_clear_error(prompt, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        generate(tiny(), prompt, **kwargs)


def test_generate_is_exported_from_the_package() -> None:
    assert gpt2reg.generate is generate and gpt2reg.GenerationOptions is GenerationOptions


def test_generate_leaves_the_callers_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tuning behind the caller's back: same layer classes, same weight memory, same training flags;
    decoding itself runs without dropout. ``tune`` is the explicit call that changes them."""

    monkeypatch.setattr(hugepages, "MIN_BYTES", 0)  # a tiny model would move if anything tuned it
    model = tiny(dropout=0.5).train()
    model.h[0].eval()  # a mix of flags, given back module by module
    state = lambda: [(type(m), m.training) for m in model.modules()]  # noqa: E731
    before, pointers = state(), [p.data_ptr() for p in model.parameters()]
    got = generate(model, [1, 2, 3], max_new_tokens=6, greedy=True, eos_token_id=None)
    assert state() == before and [p.data_ptr() for p in model.parameters()] == pointers
    want = generate(tiny().eval(), [1, 2, 3], max_new_tokens=6, greedy=True, eos_token_id=None)
    assert got[0].generated_ids == want[0].generated_ids  # dropout off while decoding

    tune(model)
    assert state() != before and not model.training
    assert generate(model, [1, 2, 3], max_new_tokens=6, greedy=True, eos_token_id=None)[0].generated_ids == \
        want[0].generated_ids


class CountingEngine:
    """A numpy decoding engine whose next token is always the last one + 1: what an ONNX engine plugs in."""

    vocab_size, block_size, cache_bytes_per_token = 50, 32, 0

    def __init__(self):
        self.last, self.kept = [], []

    def add(self, prompts, copies):
        self.last += [p[-1] for p, c in zip(prompts, copies, strict=True) for _ in range(c)]
        return self._logits()

    def step(self, tokens):
        self.last = list(tokens)
        return self._logits()

    def keep(self, rows):
        self.last = [self.last[i] for i in rows]
        self.kept.append(len(rows))

    def _logits(self):
        return np.eye(self.vocab_size)[[(t + 1) % self.vocab_size for t in self.last]] * 10


def test_decode_drives_any_engine_and_drops_finished_rows() -> None:
    engine = CountingEngine()
    samples = decode(engine, [[1, 2], [40]], max_new_tokens=5, greedy=True, num_samples=2, eos_token_id=44)
    assert [s.generated_ids for s in samples] == [[3, 4, 5, 6, 7]] * 2 + [[41, 42, 43, 44]] * 2
    assert [s.finish_reason for s in samples] == ["length", "length", "eos", "eos"]
    assert engine.kept == [2]  # the two ended by end-of-text left; the others decoded on alone


def test_sampling_and_text_helpers_import_without_torch() -> None:
    """The torch-free ONNX runtime reuses the sampler, TextStream and prompt helpers."""
    import subprocess
    import sys

    code = "import sys, gpt2reg.generation as g; g.decode; g.Sampler; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("gen") / "tiny"
    gpt2reg.save_model(tiny(vocab_size=50257), directory)
    return directory


def invoke(*args: str):
    from gpt2reg.cli import cli

    return CliRunner().invoke(cli, ["generate", *args])


def test_cli_json_matches_the_api(model_dir: Path) -> None:
    result = invoke(str(model_dir), "-p", "Hello", "-p", "The cat sat", "-n", "8", "--seed", "4",
                    "--num-samples", "2", "--top-k", "50", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = generate(gpt2reg.load_model(model_dir), ["Hello", "The cat sat"], max_new_tokens=8, seed=4,
                        num_samples=2, top_k=50)
    assert [{k: d[k] for k in ("prompt_ids", "generated_ids", "text")} for d in data] == [
        {"prompt_ids": s.prompt_ids, "generated_ids": s.generated_ids, "text": s.text} for s in expected
    ]


def test_cli_streams_prompt_and_continuation(model_dir: Path) -> None:
    streamed = invoke(str(model_dir), "-p", "Hello", "-n", "8", "--greedy")
    plain = invoke(str(model_dir), "-p", "Hello", "-n", "8", "--greedy", "--no-stream")
    assert streamed.exit_code == 0 and plain.exit_code == 0
    text = generate(gpt2reg.load_model(model_dir), "Hello", max_new_tokens=8, greedy=True)[0].text
    assert streamed.output == plain.output == f"Hello{text}\n"
    several = invoke(str(model_dir), "-p", "Hello", "-p", "Bye", "-n", "4", "--seed", "0")
    assert several.output.count("--- prompt") == 2


def test_cli_warns_on_stderr_when_the_prompt_is_cut(model_dir: Path) -> None:
    result = invoke(str(model_dir), "-p", " word" * 80, "-n", "4", "--greedy", "--json")
    assert result.exit_code == 0
    assert "Warning: the prompt has 80 tokens; kept the last 60" in result.stderr
    assert json.loads(result.stdout)[0]["prompt_ids"] == gpt2reg.get_tokenizer().encode(" word" * 80)[-60:]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "0"], "--top-k"),
        (["--greedy", "--top-k", "5"], "--greedy"),
    ],
)
def test_cli_rejects_bad_values(model_dir: Path, args: list[str], message: str) -> None:
    result = invoke(str(model_dir), "-p", "Hi", *args)
    assert result.exit_code == 2 and message in result.output


def test_cli_rejects_an_empty_prompt_and_a_missing_model(model_dir: Path) -> None:
    result = invoke(str(model_dir), "-p", "")
    assert result.exit_code == 2 and "must not be empty" in result.output
    result = invoke("-p", "Hi")
    assert result.exit_code == 2 and "give MODEL" in result.output
