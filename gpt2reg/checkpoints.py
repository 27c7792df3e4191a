"""Save and load models: gpt2reg's own model directory, Hugging Face GPT-2, nanoGPT ``ckpt.pt``, hub names.

Every reader ends in the same place: a ``GPTConfig`` and the checkpoint's tensors renamed to gpt2reg's
keys. Those are checked key by key against a model built on the meta device (so a mismatch names the
offending keys before anything is allocated) and then assigned as the model's parameters, so the
weights are never held twice. Pickle files are only ever read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import stat
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .config import GPTConfig
from .errors import CheckpointError, Gpt2regError, InputError, first_line
from .files import check_folder, staged
from .model import GPT
from .plugins import get_registry

MODEL_CONFIG_FILE = "gpt2reg.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "gpt2reg-model"
FORMAT_VERSION = 1

HF_CONFIG_FILE = "config.json"
HF_SAFETENSORS_FILE = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_PICKLE_FILE = "pytorch_model.bin"
NANOGPT_FILE = "ckpt.pt"

GPT2_VOCAB = 50257
NANOGPT_PADDED_VOCAB = 50304  # nanoGPT rounds GPT-2's vocabulary up to a multiple of 64 for speed

# Hugging Face activation names -> registry names. gelu_new and gelu_pytorch_tanh are both tanh GELU.
HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_HF_CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers, not weights
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".json")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


# -- saving -------------------------------------------------------------------------------------


def save_model(model: GPT, directory: str | Path, *, force: bool = False) -> Path:
    """Write ``model`` as a model directory: ``gpt2reg.json`` (config) and ``model.safetensors``.

    Refuses a non-empty directory unless ``force``, so a typo never clobbers another model. Both
    files are written to temporary names first and renamed into place, so an interrupted save never
    leaves a half-written model behind.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig):
        raise TypeError(f"save_model needs a gpt2reg GPT model, got {type(model).__name__}")
    directory = check_folder(directory, what="the model", force=force)
    from . import __version__

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gpt2reg_version": __version__,
        "config": config.to_dict(),
    }
    tensors = _tensors_to_save(model)
    # The config goes last: a directory with a gpt2reg.json always has its weights in place.
    with staged(directory, what="the model") as stage:
        save_file(tensors, str(stage.path(WEIGHTS_FILE)), metadata={"format": "pt"})
        config_path = stage.path(MODEL_CONFIG_FILE)
        config_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        # safetensors creates its file private (0600); give it the mode a plain open() got under the umask.
        os.chmod(stage.path(WEIGHTS_FILE), stat.S_IMODE(config_path.stat().st_mode))
    return directory


def _tensors_to_save(model: GPT) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors; any that overlap another in memory are copied.

    safetensors refuses overlapping tensors (they would be stored twice). Views into one big buffer,
    as a loaded safetensors file gives, do not overlap and are written without a copy.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.is_meta:
            raise CheckpointError(f"cannot save {name}: it is on the meta device and has no values")
        tensors[name] = tensor.detach().to("cpu").contiguous()
    last_end = -1
    for name in sorted(tensors, key=lambda n: tensors[n].data_ptr()):
        tensor = tensors[name]
        start = tensor.data_ptr()
        if tensor.nbytes and start < last_end:
            tensors[name] = tensor.clone()
        last_end = max(last_end, start + tensor.nbytes)
    return tensors


# -- loading ------------------------------------------------------------------------------------


@dataclass
class _Weights:
    """A checkpoint's tensors under gpt2reg's keys, remembering each one's key in the file for messages."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # gpt2reg key -> key in the file
    transposed: set[str] = field(default_factory=set)  # stored (in, out), as HF's Conv1D
    unexpected: list[str] = field(default_factory=list)  # file keys that cannot go anywhere

    def add(self, key: str, source_key: str, tensor: torch.Tensor, transpose: bool = False) -> None:
        if key in self.tensors:  # e.g. both "transformer.wte.weight" and "wte.weight"
            self.unexpected.append(source_key)
            return
        self.tensors[key] = tensor
        self.source[key] = source_key
        if transpose:
            self.transposed.add(key)


@dataclass
class _Checkpoint:
    config: GPTConfig
    weights: _Weights
    origin: str  # what to call the checkpoint in messages


def load_model(
    source: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> GPT:
    """A model in eval mode from a model directory, a Hugging Face GPT-2 directory or weights file,
    a nanoGPT ``ckpt.pt``, or a hub name such as ``gpt2``.

    ``dtype`` casts the floating-point weights (``None`` keeps the checkpoint's). Anything that does
    not fit raises ``CheckpointError`` with a one-line message naming the file and the keys.
    """
    target_dtype = _as_dtype(dtype)
    if isinstance(device, str):
        from .accel.device import resolve_device

        device = resolve_device(device)  # "tpu" or "cuda" without a GPU: one line, before reading anything
    checkpoint = _read(source)
    return _build(checkpoint, torch.device(device), target_dtype)


def _read(source: str | Path) -> _Checkpoint:
    path = Path(source).expanduser()
    if not path.exists():
        if path.is_symlink():  # there, but leading nowhere: not a name to look up on the Hub
            try:
                os.stat(path)
                reason = "it cannot be followed"
            except OSError as exc:
                reason = ("it is a loop of links" if exc.errno == errno.ELOOP
                          else f"its target {os.readlink(path)} does not exist")
            raise CheckpointError(f"{source} is a symbolic link that leads nowhere: {reason}; point it at a model "
                                  "folder or file")
        if _looks_like_hub_id(str(source)):
            return _read_dir(_download(str(source)))
        raise CheckpointError(f"no such file or directory: {source}")
    if path.is_dir():
        return _read_dir(path)
    return _read_file(path)


def _read_dir(directory: Path) -> _Checkpoint:
    if (directory / MODEL_CONFIG_FILE).is_file():
        return _read_gpt2reg(directory)
    if (directory / HF_CONFIG_FILE).is_file():
        return _read_hf(directory)
    if (directory / NANOGPT_FILE).is_file():
        return _read_pickle(directory / NANOGPT_FILE)
    raise CheckpointError(
        f"{directory} holds no model: expected {MODEL_CONFIG_FILE} (gpt2reg), "
        f"{HF_CONFIG_FILE} (Hugging Face) or {NANOGPT_FILE} (nanoGPT)"
    )


def _read_file(path: Path) -> _Checkpoint:
    if path.name == MODEL_CONFIG_FILE:
        return _read_gpt2reg(path.parent)
    if path.name == HF_CONFIG_FILE:
        return _read_hf(path.parent)
    if path.name.endswith(".safetensors") or path.name == HF_SAFETENSORS_INDEX:
        if (path.parent / MODEL_CONFIG_FILE).is_file():
            return _read_gpt2reg(path.parent, path)
        if (path.parent / HF_CONFIG_FILE).is_file():
            return _read_hf(path.parent, path)
        raise CheckpointError(
            f"{path} has no {MODEL_CONFIG_FILE} or {HF_CONFIG_FILE} beside it to say which model it holds"
        )
    return _read_pickle(path)


def _read_pickle(path: Path) -> _Checkpoint:
    """A nanoGPT checkpoint, or a bare state dict (Hugging Face ``pytorch_model.bin``) with its config beside it."""
    obj = _torch_load(path)
    if isinstance(obj, dict) and "model_args" in obj and "model" in obj:
        return _from_nanogpt(obj, path)
    if (path.parent / HF_CONFIG_FILE).is_file():
        return _read_hf(path.parent, state=_as_state_dict(obj, path))
    raise CheckpointError(
        f"{path} is neither a nanoGPT checkpoint (a dict with 'model_args' and 'model') "
        f"nor a state dict with a Hugging Face {HF_CONFIG_FILE} beside it"
    )


# -- gpt2reg model directories ------------------------------------------------------------------


def _read_gpt2reg(directory: Path, weights_path: Path | None = None) -> _Checkpoint:
    config_path = directory / MODEL_CONFIG_FILE
    meta = _read_json(config_path)
    if meta.get("format") != FORMAT:
        hint = " (it looks like a Hugging Face config.json)" if "model_type" in meta else ""
        raise CheckpointError(f'{config_path} is not a gpt2reg model config: no "format": "{FORMAT}"{hint}')
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path} has format_version {version!r}; this gpt2reg reads version {FORMAT_VERSION} "
            "(upgrade gpt2reg to read newer model directories)"
        )
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f'{config_path} has no "config" object')
    config = _make_config(meta["config"], config_path)
    weights_path = weights_path or directory / WEIGHTS_FILE
    weights = _Weights()
    for key, tensor in _load_safetensors(weights_path).items():
        weights.add(key, key, tensor)
    return _Checkpoint(config, weights, str(weights_path))


# -- Hugging Face -------------------------------------------------------------------------------


def _read_hf(
    directory: Path, weights_path: Path | None = None, state: dict[str, torch.Tensor] | None = None
) -> _Checkpoint:
    config_path = directory / HF_CONFIG_FILE
    hf = _read_json(config_path)
    if hf.get("format") == FORMAT:
        raise CheckpointError(f"{config_path} is a gpt2reg model config; it must be named {MODEL_CONFIG_FILE}")
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(
            f"{config_path} describes model_type {hf.get('model_type')!r}, not 'gpt2'; gpt2reg reads GPT-2 checkpoints only"
        )
    config = _hf_config(hf, config_path)
    if state is None:
        weights_path = weights_path or _hf_weights_file(directory)
        if weights_path.name.endswith(".safetensors") or weights_path.name == HF_SAFETENSORS_INDEX:
            state = _load_safetensors(weights_path)
        else:
            state = _as_state_dict(_torch_load(weights_path), weights_path)
        origin = str(weights_path)
    else:
        origin = str(directory)
    return _Checkpoint(config, _from_hf(state, config), origin)


def hf_config(config: GPTConfig) -> dict[str, Any]:
    """``config`` as a transformers ``GPT2Config`` dict (the inverse of reading one); the one place this
    mapping is written. Raises ``CheckpointError`` for what GPT2LMHeadModel cannot express."""
    activation = next((hf for hf, ours in HF_ACTIVATIONS.items() if ours == config.act), None)
    if config.pos != "learned" or config.norm != "layernorm" or not config.bias or activation is None:
        raise CheckpointError(f"transformers' GPT-2 has no equivalent of pos={config.pos} act={config.act} "
                              f"norm={config.norm} bias={config.bias}")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # older readers of GPT-2 configs (llama.cpp's converter) want this name
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.hidden_size,
        "activation_function": activation,
        "layer_norm_epsilon": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """``model``'s tensors under GPT2LMHeadModel's names and Conv1D layout (the inverse of ``_from_hf``)."""
    tensors = {}
    for key, tensor in model.state_dict().items():
        name = "wpe.weight" if key == "pos.weight" else key
        if _HF_CONV1D.fullmatch(name):
            tensor = tensor.t()  # nn.Linear (out, in) -> Conv1D (in, out)
        tensors[name if name == "lm_head.weight" else f"transformer.{name}"] = tensor.contiguous()
    return tensors


def _hf_weights_file(directory: Path) -> Path:
    for name in (HF_SAFETENSORS_FILE, HF_SAFETENSORS_INDEX, HF_PICKLE_FILE):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory} has a {HF_CONFIG_FILE} but no {HF_SAFETENSORS_FILE} or {HF_PICKLE_FILE}")


def _hf_config(hf: dict[str, Any], path: Path) -> GPTConfig:
    """GPTConfig from a GPT-2 ``config.json``; absent fields take ``transformers.GPT2Config``'s defaults."""
    if hf.get("scale_attn_weights", True) is not True or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise CheckpointError(
            f"{path}: scale_attn_weights=false or scale_attn_by_inverse_layer_idx=true is not supported "
            "(gpt2reg scales attention scores by 1/sqrt(head_dim) only)"
        )
    activation = hf.get("activation_function", "gelu_new")
    if activation not in HF_ACTIVATIONS:
        raise CheckpointError(
            f"{path}: activation_function {activation!r} is not supported; supported: {', '.join(HF_ACTIVATIONS)}"
        )
    n_embd = hf.get("n_embd", 768)
    fields: dict[str, Any] = dict(
        vocab_size=hf.get("vocab_size", GPT2_VOCAB),
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        act=HF_ACTIVATIONS[activation],
        pos="learned",
        norm="layernorm",
        bias=True,
        # HF's three training-time dropout rates are not carried over: a loaded model is for inference.
        dropout=0.0,
    )
    n_inner = hf.get("n_inner")
    if n_inner:
        if not isinstance(n_embd, int) or n_embd <= 0:
            raise CheckpointError(f"{path}: n_embd={n_embd!r}: expected a positive integer")
        fields["mlp_ratio"] = n_inner / n_embd
    return _make_config(fields, path)


def _from_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> _Weights:
    """HF names and Conv1D layout -> gpt2reg's; keys with or without the ``transformer.`` prefix."""
    weights = _Weights()
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        if _MASK_BUFFER.fullmatch(name):
            continue
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # the same matrix as wte.weight; the tied model has no separate head
        if name == "wpe.weight":
            name = "pos.weight"
        weights.add(name, key, tensor, transpose=bool(_HF_CONV1D.fullmatch(name)))
    return weights


# -- nanoGPT ------------------------------------------------------------------------------------


def _from_nanogpt(ckpt: dict[str, Any], path: Path) -> _Checkpoint:
    """nanoGPT's ``model_args`` and ``model`` state dict: nn.Linear layout already, exact-erf GELU.

    nanoGPT pads GPT-2's vocabulary of 50257 to 50304 rows; the extra rows are never produced by the
    tokenizer, so they are dropped and the model gets ``vocab_size=50257`` (logits match the tokenizer).
    """
    args, state = ckpt["model_args"], _as_state_dict(ckpt["model"], path)
    if not isinstance(args, dict):
        raise CheckpointError(f"{path}: 'model_args' is not a dict")
    renamed: dict[str, tuple[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        name = key.removeprefix("_orig_mod.").removeprefix("transformer.")
        if _MASK_BUFFER.fullmatch(name):
            continue
        renamed[name if name != "wpe.weight" else "pos.weight"] = (key, tensor)
    vocab_size = args.get("vocab_size", NANOGPT_PADDED_VOCAB)
    wte = renamed.get("wte.weight")
    head = renamed.get("lm_head.weight")
    # nanoGPT ties lm_head to wte; the two keys then share one tensor.
    tied = head is None or (wte is not None and _same_tensor(wte[1], head[1]))
    if tied and head is not None:
        del renamed["lm_head.weight"]
    if vocab_size == NANOGPT_PADDED_VOCAB:
        vocab_size = GPT2_VOCAB
        for name in ("wte.weight", "lm_head.weight"):
            if name in renamed and renamed[name][1].shape[0] == NANOGPT_PADDED_VOCAB:
                key, tensor = renamed[name]
                renamed[name] = (key, tensor[:GPT2_VOCAB])
    fields = dict(
        n_layer=args.get("n_layer", 12),
        n_head=args.get("n_head", 12),
        n_embd=args.get("n_embd", 768),
        block_size=args.get("block_size", 1024),
        bias=args.get("bias", True),
        vocab_size=vocab_size,
        dropout=args.get("dropout", 0.0),
        tie_embeddings=tied,
        act="gelu",
        pos="learned",
        norm="layernorm",
    )
    config = _make_config(fields, path)
    weights = _Weights()
    for name, (key, tensor) in renamed.items():
        weights.add(name, key, tensor)
    return _Checkpoint(config, weights, str(path))


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return (a.data_ptr() == b.data_ptr() and a.stride() == b.stride()) or torch.equal(a, b)


# -- hub ----------------------------------------------------------------------------------------


def _looks_like_hub_id(name: str) -> bool:
    """``gpt2`` or ``owner/name``; anything with a path prefix or a weights-file suffix is a path."""
    return (
        bool(_HUB_ID.fullmatch(name))
        and ".." not in name
        and "--" not in name
        and not name.endswith((".", "-", *_FILE_SUFFIXES))
    )


def _download(repo_id: str) -> Path:
    """The snapshot directory holding ``config.json`` and the weights of a GPT-2 repo on the Hub."""
    offline = any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    # huggingface_hub retries an unreachable host for ~25 s, logging each try: where the Hub cannot be
    # reached at all, use the local cache only, so an offline user gets the one-line error at once.
    offline = offline or not _hub_reachable()
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        config_file = hf_hub_download(repo_id, HF_CONFIG_FILE, local_files_only=offline)
        try:
            hf_hub_download(repo_id, HF_SAFETENSORS_FILE, local_files_only=offline)
        except EntryNotFoundError:
            hf_hub_download(repo_id, HF_PICKLE_FILE, local_files_only=offline)
    except Exception as exc:  # network, offline mode, missing repo: all end the same way for the user
        raise CheckpointError(
            f"'{repo_id}' is not a local file or directory and could not be downloaded from the Hugging Face Hub "
            f"({_download_failure(exc, offline)}); pass a local model directory or checkpoint file instead"
        ) from None
    return Path(config_file).parent


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens (DNS failure or refusal: no)."""
    import socket
    from urllib.parse import urlsplit

    try:
        from huggingface_hub import constants

        url = urlsplit(constants.ENDPOINT)
    except Exception:
        return True  # let the download itself report what is wrong
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_failure(exc: Exception, offline: bool) -> str:
    """Why a download failed, in a few words (huggingface_hub's own messages run to several lines)."""
    if offline:
        return "the Hub cannot be reached (no network, or HF_HUB_OFFLINE is set) and it is not in the local cache"
    if isinstance(exc, ImportError):
        return "huggingface_hub is not installed"
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError):
        return "the Hub could not be reached and it is not in the local cache"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repository, or it is private or gated"
    if isinstance(exc, EntryNotFoundError):
        return f"the repository has no {HF_CONFIG_FILE} with {HF_SAFETENSORS_FILE} or {HF_PICKLE_FILE}"
    return first_line(exc)


# -- building the model -------------------------------------------------------------------------


@contextlib.contextmanager
def _init_skipped() -> Iterator[None]:
    """``torch.nn.init`` functions as no-ops while the meta model is built (as transformers does).

    The checkpoint supplies every weight, and initialising meta tensors goes through torch's
    reference decompositions, whose first use imports torch._dynamo: about 1 s of every load.
    """
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def meta_model(config: GPTConfig) -> GPT:
    """The model ``config`` builds, on the meta device: shapes and parameter counts without memory or init."""
    with torch.device("meta"), _init_skipped():
        return GPT(config)


def _build(checkpoint: _Checkpoint, device: torch.device, dtype: torch.dtype | None) -> GPT:
    """Assign the checkpoint's tensors to a model built on the meta device: no init, no second copy."""
    config, weights = checkpoint.config, checkpoint.weights
    model = meta_model(config)
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    _check_fit(weights, expected, checkpoint)
    state = {}
    for key in list(weights.tensors):
        tensor = weights.tensors.pop(key)  # drop each source tensor as soon as it is converted
        if key in weights.transposed:
            tensor = tensor.t()
        cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        state[key] = tensor.to(device=device, dtype=cast).contiguous()
    model.load_state_dict(state, assign=True)
    _materialize_buffers(model, config)
    if dtype is None:
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        dtype = dtypes.pop() if len(dtypes) == 1 else None
    # As model.to(dtype) did before the save: floating buffers (e.g. RoPE's inv_freq) follow the weights.
    model.to(device=device, dtype=dtype)
    return model.eval()


def _check_fit(weights: _Weights, expected: dict[str, tuple[int, ...]], checkpoint: _Checkpoint) -> None:
    """Raise one message naming every missing, unexpected and mis-shaped key (a few of each)."""
    missing = [key for key in expected if key not in weights.tensors]
    unexpected = weights.unexpected + [weights.source[k] for k in weights.tensors if k not in expected]
    mismatched = []
    for key in expected:  # in the model's order: embeddings first, then layer by layer
        tensor = weights.tensors.get(key)
        if tensor is not None:
            want = expected[key][::-1] if key in weights.transposed else expected[key]
            if tuple(tensor.shape) != want:
                mismatched.append(f"{weights.source[key]} expected {_shape(want)}, got {_shape(tensor.shape)}")
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_some(mismatched)}")
    if missing:
        problems.append(f"missing keys: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_some(unexpected)}")
    if problems:
        c = checkpoint.config
        summary = (
            f"n_layer={c.n_layer} n_head={c.n_head} n_embd={c.n_embd} vocab_size={c.vocab_size} "
            f"block_size={c.block_size} bias={c.bias} tie_embeddings={c.tie_embeddings} pos={c.pos}"
        )
        raise CheckpointError(f"{checkpoint.origin} does not fit its config ({summary}): {'; '.join(problems)}")


def _materialize_buffers(model: GPT, config: GPTConfig) -> None:
    """Give real values to the non-persistent buffers still on the meta device (e.g. RoPE's inv_freq).

    They are not in the state dict, and only the registry components (positional encoding, norms,
    activations) own buffers; those modules are small, so a fresh one is built on the CPU and its
    buffers are taken over. The big modules (embeddings, linears) are never built twice.
    """
    registry = get_registry()
    slots = [("pos", config.pos, model.pos), ("norm", config.norm, model.ln_f)]
    for block in model.h:
        slots += [
            ("norm", config.norm, block.ln_1),
            ("norm", config.norm, block.ln_2),
            ("act", config.act, block.mlp.act),
        ]
    for kind, name, module in slots:
        meta = [key for key, buffer in module.named_buffers() if buffer.is_meta]
        if not meta:
            continue
        fresh = dict(registry.create(kind, name, config).named_buffers())
        for key in meta:
            owner, _, leaf = key.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = fresh[key]
    left = [key for key, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors left without values after loading: {_some(left)}")


# -- small helpers ------------------------------------------------------------------------------


def _torch_load(path: Path) -> Any:
    """``torch.load`` that never runs code: anything but tensors and plain containers is refused."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path} could not be read: {first_line(exc)}") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a pickle
        raise CheckpointError(
            f"{path} is not a model or checkpoint file (neither safetensors, a PyTorch zip nor a pickle); pass a "
            "model folder, a Hugging Face or nanoGPT checkpoint, or a hub name"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" notes on plain pickles
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} contains objects other than tensors{what}, so it was not loaded: "
            "unpickling it could run code; gpt2reg reads weights-only checkpoints"
        ) from None
    except Exception as exc:  # torch.load raises what its unpickler meets: RuntimeError, EOFError, KeyError...
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint (truncated or corrupt?): {first_line(exc)}"
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of every shard an HF ``model.safetensors.index.json`` names."""
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    if path.name.endswith(".json"):
        index = _read_json(path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f'{path} has no "weight_map" object')
        tensors: dict[str, torch.Tensor] = {}
        for shard in dict.fromkeys(weight_map.values()):
            tensors.update(_load_safetensors(path.parent / str(shard)))
        return tensors
    try:
        return _read_safetensors(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {first_line(exc)}"
        ) from None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file, each read into memory of its own.

    Not mapped (as ``safetensors.torch.load_file`` does): every tensor of a mapped file keeps the whole
    mapping, so the pages a model's move into huge pages (or to another dtype or device) reads stay
    resident until the last tensor has moved, a second copy of the weights at the peak (124M: 1.2 GB for
    495 MB of weights). Read, each source tensor's memory goes as soon as it has moved.
    """
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 2 <= length <= min(100 * 2**20, path.stat().st_size - 8):
            raise ValueError(f"header of {length} bytes")
        header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            data = tensor.reshape(-1).view(torch.uint8).numpy()
            f.seek(8 + length + start)
            if end - start != data.nbytes or f.readinto(data) != data.nbytes:
                raise ValueError(f"{name}: {end - start} bytes for shape {info['shape']}, or the file ends early")
            tensors[name] = tensor
    return tensors


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} could not be read as JSON: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def _make_config(fields: dict[str, Any], path: Path) -> GPTConfig:
    try:
        return GPTConfig.from_dict(fields)
    except Gpt2regError as exc:
        raise CheckpointError(f"{path}: the model config is not usable: {exc}") from None
    except TypeError as exc:
        raise CheckpointError(f"{path}: the model config is malformed: {exc}") from None


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise InputError(f"dtype {dtype!r} is not a floating-point type; choose one of: {', '.join(_DTYPES)}")


def _shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _some(items: list[str], limit: int = 4) -> str:
    """``a, b, c, d and 7 more``: long key lists stay on one readable line."""
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


__all__ = ["MODEL_CONFIG_FILE", "WEIGHTS_FILE", "hf_config", "hf_state_dict", "load_model", "save_model"]
