"""Checkpoints: parity with Hugging Face's GPT-2 on its own files, nanoGPT files, our round trip, bad input.

The reference is ``transformers.GPT2LMHeadModel`` with random weights and perturbed biases and norms
(HF initialises those to 0 and 1, so a loader that dropped them would still pass an unperturbed test).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2reg import CheckpointError, checkpoints
from gpt2reg.checkpoints import MODEL_CONFIG_FILE, WEIGHTS_FILE, load_model, save_model
from gpt2reg.errors import OutputError
from gpt2reg.model import build_model

transformers = pytest.importorskip("transformers")

SMALL_HF = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=97)
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=96)
ATOL = 1e-4


def hf_model(seed: int = 0, **overrides) -> transformers.GPT2LMHeadModel:
    """A GPT-2 from transformers with every weight, bias and norm parameter random."""
    fields = {**SMALL_HF, **overrides}
    vocab = fields.get("vocab_size", 50257)
    config = transformers.GPT2Config(**fields, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.normal_(0, 0.1)
            else:
                param.normal_(0, 0.05)
    return model


def token_ids(vocab: int, batch: int = 2, seq: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def assert_hf_parity(hf, source, n_tokens: int | None = None) -> None:
    ids = token_ids(hf.config.vocab_size)
    ours = load_model(source)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    n = n_tokens or expected.shape[-1]
    assert got.shape == (*ids.shape, n)
    assert max_diff(got, expected[..., :n]) < ATOL


def save_hf_pickle(hf, directory: Path) -> Path:
    """transformers 5 always writes safetensors, so a ``pytorch_model.bin`` is written by torch.save."""
    directory.mkdir(parents=True, exist_ok=True)
    hf.config.save_pretrained(directory)
    torch.save(hf.state_dict(), directory / "pytorch_model.bin")
    return directory


def nanogpt_checkpoint(hf, *, compiled: bool = False, padded: bool = False) -> dict:
    """What nanoGPT's train.py saves, built from an HF model: Linear layout, ``transformer.`` keys."""
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {}
    for key, tensor in hf.state_dict().items():
        if key == "lm_head.weight":
            continue
        state[key] = tensor.t().contiguous() if key.endswith(conv1d) else tensor.clone()
    vocab = hf.config.vocab_size
    if padded:
        extra = torch.randn(50304 - vocab, hf.config.n_embd, generator=torch.Generator().manual_seed(3))
        state["transformer.wte.weight"] = torch.cat((state["transformer.wte.weight"], extra))
        vocab = 50304
    state["lm_head.weight"] = state["transformer.wte.weight"]  # nanoGPT ties them: one shared tensor
    if compiled:
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    c = hf.config
    model_args = dict(
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        block_size=c.n_positions,
        bias=True,
        vocab_size=vocab,
        dropout=0.0,
    )
    return {
        "model": state,
        "model_args": model_args,
        "iter_num": 10,
        "best_val_loss": torch.tensor(3.2),
        "optimizer": {"state": {}, "param_groups": [{"lr": 6e-4}]},
        "config": {"dataset": "openwebtext"},
    }


# -- Hugging Face parity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(activation_function="relu", n_inner=48), dict(tie_word_embeddings=False), dict(layer_norm_epsilon=1e-3)],
    ids=["default", "relu-n_inner", "untied", "eps"],
)
def test_hf_safetensors_parity(tmp_path, overrides) -> None:
    hf = hf_model(**overrides)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert_hf_parity(hf, tmp_path)
    assert_hf_parity(hf, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    assert (loaded.lm_head is None) == hf.config.tie_word_embeddings
    assert all(p.is_contiguous() for p in loaded.parameters())  # Conv1D weights transposed into place
    assert loaded.config.act == ("relu" if "activation_function" in overrides else "gelu_tanh")


def test_hf_pickle_parity(tmp_path) -> None:
    hf = hf_model()
    save_hf_pickle(hf, tmp_path)
    assert_hf_parity(hf, tmp_path)
    assert_hf_parity(hf, tmp_path / "pytorch_model.bin")


def test_hf_keys_without_transformer_prefix(tmp_path) -> None:
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    state = {
        k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"
    }
    assert "wte.weight" in state and "h.0.attn.c_attn.weight" in state
    save_file(state, tmp_path / "model.safetensors")
    assert_hf_parity(hf, tmp_path)


def test_hf_mask_buffers_are_ignored(tmp_path) -> None:
    """Older HF files carry ``h.N.attn.bias`` / ``masked_bias`` mask buffers; they are not weights."""
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    for i in range(hf.config.n_layer):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64, dtype=torch.bool)).view(1, 1, 64, 64)
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert_hf_parity(hf, tmp_path)


@pytest.mark.slow
def test_hf_gpt2_small_124m_parity(tmp_path) -> None:
    """The full GPT-2 small shape, from both file forms HF users have."""
    hf = hf_model(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    assert sum(p.numel() for p in hf.parameters()) == 124_439_808
    hf.save_pretrained(tmp_path / "safetensors")
    save_hf_pickle(hf, tmp_path / "pickle")
    ids = token_ids(50257, batch=1, seq=12)
    with torch.no_grad():
        expected = hf(ids).logits
    del hf
    for form in ("safetensors", "pickle"):
        model = load_model(tmp_path / form)
        assert model.num_parameters() == 124_439_808 and model.lm_head is None
        with torch.no_grad():
            assert max_diff(model(ids), expected) < ATOL, form
        del model


# -- nanoGPT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compiled,padded", [(False, False), (True, True)], ids=["plain", "orig_mod-padded"])
def test_nanogpt_parity(tmp_path, compiled, padded) -> None:
    hf = hf_model(vocab_size=50257, activation_function="gelu")  # nanoGPT's MLP uses exact GELU
    torch.save(nanogpt_checkpoint(hf, compiled=compiled, padded=padded), tmp_path / "ckpt.pt")
    assert_hf_parity(hf, tmp_path / "ckpt.pt", n_tokens=50257)
    model = load_model(tmp_path)  # a nanoGPT out_dir
    assert model.config.vocab_size == 50257 and model.config.act == "gelu" and model.lm_head is None
    assert model.wte.weight.shape == (50257, 32)


def test_nanogpt_without_biases(tmp_path) -> None:
    """``bias=False`` nanoGPT models have no bias tensors at all, in linears or norms."""
    ours = build_model(**TINY, bias=False, act="gelu", seed=0)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if "ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    state = {
        ("lm_head.weight" if k == "wte.weight" else f"transformer.{k.replace('pos.', 'wpe.')}"): v
        for k, v in ours.state_dict().items()
    }
    state["transformer.wte.weight"] = state["lm_head.weight"]
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, bias=False, vocab_size=96, dropout=0.0)
    torch.save({"model": state, "model_args": args}, tmp_path / "ckpt.pt")
    loaded = load_model(tmp_path / "ckpt.pt")
    assert loaded.config.bias is False and not any(n.endswith("bias") for n, _ in loaded.named_parameters())
    ids = token_ids(96)
    with torch.no_grad():
        assert torch.equal(loaded(ids), ours.eval()(ids))


# -- our own format -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(pos="learned"),
        dict(pos="rope", act="swiglu", norm="rmsnorm"),
        dict(pos="sinusoidal", tie_embeddings=False, bias=False),
    ],
    ids=["learned", "rope", "sinusoidal-untied"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_round_trip(tmp_path, overrides, dtype) -> None:
    model = build_model(**TINY, **overrides, seed=0).to(dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    directory = save_model(model, tmp_path / "model")
    assert sorted(p.name for p in directory.iterdir()) == [MODEL_CONFIG_FILE, WEIGHTS_FILE]
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in directory.iterdir())  # not private temp files
    meta = json.loads((directory / MODEL_CONFIG_FILE).read_text())
    assert meta["format"] == "gpt2reg-model" and meta["format_version"] == 1 and "gpt2reg_version" in meta
    assert meta["config"] == model.config.to_dict()
    stored = load_file(directory / WEIGHTS_FILE)
    assert stored.keys() == model.state_dict().keys()
    assert ("lm_head.weight" in stored) == (not model.config.tie_embeddings)

    loaded = load_model(directory)
    assert loaded.config == model.config and not loaded.training
    assert all(isinstance(p, torch.nn.Parameter) and p.dtype == dtype for p in loaded.parameters())
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    ids = token_ids(96)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_load_with_dtype_matches_cast_model(tmp_path) -> None:
    model = build_model(**TINY, pos="rope", seed=0).eval()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path, dtype="bf16")
    assert loaded.wte.weight.dtype == torch.bfloat16
    ids = token_ids(96)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model.to(torch.bfloat16)(ids))


def test_tied_embedding_is_one_tensor(tmp_path) -> None:
    save_model(build_model(**TINY, seed=0), tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.lm_head is None and "lm_head.weight" not in loaded.state_dict()
    assert loaded.num_parameters() == build_model(**TINY).num_parameters()


def test_save_refuses_non_empty_directory_without_force(tmp_path) -> None:
    first, second = build_model(**TINY, seed=0), build_model(**TINY, seed=1)
    save_model(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match="--force"):
        save_model(second, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        save_model(second, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]

    save_model(second, tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["other", MODEL_CONFIG_FILE, WEIGHTS_FILE])
    assert torch.equal(load_model(tmp_path).wte.weight, second.wte.weight)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch) -> None:
    import gpt2reg.checkpoints as checkpoints

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", broken_save_file)
    with pytest.raises(OutputError, match="no space left on device; free some space"):
        save_model(build_model(**TINY), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(OutputError):
        save_model(build_model(**TINY), existing)
    assert list(existing.iterdir()) == []


# -- bad input ----------------------------------------------------------------------------------


def assert_one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_config_that_does_not_fit_the_weights(tmp_path) -> None:
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path)
    message = assert_one_line(exc)
    assert "shape mismatch" in message and "transformer.wte.weight expected (97, 64), got (97, 32)" in message
    assert message.endswith("and 24 more")  # long lists are cut short

    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 64}))
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path)
    # Conv1D weights are reported as the file stores them, (in, out)
    assert "transformer.h.0.mlp.c_fc.weight expected (32, 64), got (32, 128)" in assert_one_line(exc)


def test_missing_and_unexpected_keys_are_named(tmp_path) -> None:
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    state = {
        k: v.contiguous() for k, v in hf.state_dict().items() if k not in ("lm_head.weight", "transformer.ln_f.bias")
    }
    state["transformer.h.0.attn.extra"] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path)
    message = assert_one_line(exc)
    assert "missing keys: ln_f.bias" in message and "unexpected keys: transformer.h.0.attn.extra" in message


def test_more_layers_in_config_than_in_file(tmp_path) -> None:
    model = build_model(**TINY, seed=0)
    save_model(model, tmp_path)
    meta = json.loads((tmp_path / MODEL_CONFIG_FILE).read_text())
    meta["config"]["n_layer"] = 6
    (tmp_path / MODEL_CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing keys: h\.2\..*and \d+ more"):
        load_model(tmp_path)


def test_truncated_safetensors(tmp_path) -> None:
    save_model(build_model(**TINY), tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as exc:
        load_model(tmp_path)
    assert_one_line(exc)


def test_truncated_pickle(tmp_path) -> None:
    hf = hf_model()
    save_hf_pickle(hf, tmp_path)
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as exc:
        load_model(tmp_path)
    assert_one_line(exc)


def _make_marker(path: str) -> dict:
    Path(path).write_text("code ran")
    return {}


class Payload:
    """Unpickling this calls ``_make_marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_make_marker, (self.marker,))


@pytest.mark.parametrize("form", ["ckpt.pt", "pytorch_model.bin", "plain-pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, form) -> None:
    marker = tmp_path / "marker"
    hf = hf_model()
    if form == "ckpt.pt":
        path = tmp_path / "ckpt.pt"
        torch.save({"model_args": {"n_layer": 2}, "model": Payload(marker)}, path)
    elif form == "pytorch_model.bin":
        hf.config.save_pretrained(tmp_path)
        path = tmp_path / "pytorch_model.bin"
        torch.save({**hf.state_dict(), "x": Payload(marker)}, path)
    else:
        hf.config.save_pretrained(tmp_path)
        path = tmp_path / "pytorch_model.bin"
        with open(path, "wb") as f:
            pickle.dump({"x": Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="contains objects other than tensors.*not loaded") as exc:
        load_model(tmp_path if form != "ckpt.pt" else path)
    assert_one_line(exc)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    if form != "plain-pickle":
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_hub_name_offline_fails_in_one_line(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.chdir(tmp_path)
    for name in ("gpt2", "openai-community/gpt2"):
        with pytest.raises(CheckpointError, match="could not be downloaded") as exc:
            load_model(name)
        message = assert_one_line(exc)
        assert name in message and "local model directory or checkpoint file" in message


def test_hub_unreachable_says_so(tmp_path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub\nand more")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(checkpoints, "_hub_reachable", lambda: True)  # the probe passes, the download fails
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="the Hub could not be reached and it is not in the local cache") as exc:
        load_model("gpt2")
    assert_one_line(exc)


def test_unreachable_hub_fails_fast_without_retries(tmp_path, monkeypatch) -> None:
    """No network at all: the cache is consulted, no retries are made, and the error says why."""
    import huggingface_hub
    import huggingface_hub.constants

    calls = []

    def cache_only(repo_id, filename, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(checkpoints, "_hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cache_only)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="the Hub cannot be reached") as exc:
        load_model("gpt2")
    assert_one_line(exc)
    assert calls == [True]


def test_hub_download_falls_back_to_pickle(tmp_path, monkeypatch) -> None:
    """Without network, a stand-in for ``hf_hub_download`` serves a repo that only has pytorch_model.bin."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    hf = hf_model()
    repo = save_hf_pickle(hf, tmp_path / "repo")
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        if not (repo / filename).exists():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(repo / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.chdir(tmp_path)
    assert_hf_parity(hf, "someone/tiny-gpt2")
    assert [f for _, f in requested[:3]] == ["config.json", "model.safetensors", "pytorch_model.bin"]


def test_nonexistent_path(tmp_path) -> None:
    for path in (tmp_path / "nope", "./missing/ckpt.pt", "missing.safetensors"):
        with pytest.raises(CheckpointError, match="no such file or directory"):
            load_model(path)


def test_configs_are_never_mistaken_for_each_other(tmp_path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    save_model(build_model(**TINY), ours)
    os.replace(ours / MODEL_CONFIG_FILE, ours / "config.json")
    with pytest.raises(CheckpointError, match=f"must be named {MODEL_CONFIG_FILE}"):
        load_model(ours)

    hf_model().save_pretrained(theirs)
    os.replace(theirs / "config.json", theirs / MODEL_CONFIG_FILE)
    with pytest.raises(CheckpointError, match="not a gpt2reg model config"):
        load_model(theirs)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(model_type="llama"), "model_type 'llama', not 'gpt2'"),
        (dict(activation_function="gelu_fast"), "activation_function 'gelu_fast' is not supported"),
        (dict(scale_attn_by_inverse_layer_idx=True), "not supported"),
        (dict(n_head=5), "not divisible"),
    ],
)
def test_unsupported_hf_config(tmp_path, change, match) -> None:
    hf_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=match) as exc:
        load_model(tmp_path)
    assert_one_line(exc)


def test_directory_without_a_model(tmp_path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="holds no model"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="nor a state dict"):
        torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
        load_model(tmp_path / "weights.pt")


def test_save_after_load_and_shared_tensors(tmp_path) -> None:
    """A loaded model (views into one mapped file) saves as is; truly shared tensors are stored twice."""
    model = build_model(**TINY, tie_embeddings=False, seed=0)
    save_model(model, tmp_path / "a")
    loaded = load_model(tmp_path / "a")
    save_model(loaded, tmp_path / "b")
    assert (tmp_path / "a" / WEIGHTS_FILE).read_bytes() == (tmp_path / "b" / WEIGHTS_FILE).read_bytes()
    save_model(loaded, tmp_path / "a", force=True)  # over the very file it is mapped from
    assert torch.equal(load_model(tmp_path / "a").wte.weight, model.wte.weight)
    loaded.lm_head.weight = loaded.wte.weight  # tied by hand in an untied config
    save_model(loaded, tmp_path / "c")
    assert torch.equal(load_model(tmp_path / "c").lm_head.weight, model.wte.weight)
