"""Checks for components, for plugin authors and for gpt2reg's own registry-driven tests.

One call checks a registered component the way gpt2reg checks its built-ins::

    from gpt2reg.testing import check_component
    check_component("pos", "alibi")          # raises AssertionError naming the failed property

Each check builds a fresh tiny model around the component (``tiny_config``). All but ``onnx`` run in
well under a second on a CPU; ``onnx`` (export and validate under onnxruntime) takes ~10 s.
``plugin_components("alibi")`` lists what a plugin registered, to parametrise a test over it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .config import GPTConfig
from .errors import first_line
from .model import GPT, build_model
from .registry import KINDS

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=96)
# check_component's weights: at GPT-2's init_std=0.02 a tiny model's logits are ~1e-2 and removing a
# component's effect (ALiBi's bias, say) moves them by ~1e-5, under every tolerance here. At 0.2 the
# logits are O(1), such a bug moves them by far more than 1e-4, and honest float error stays ~1e-6.
CHECK_INIT_STD = 0.2


def component_names(kind: str) -> list[str]:
    """Every registered component of ``kind``: tests parametrised by it cover new plugins for free."""
    from .plugins import get_registry

    return get_registry().names(kind)


def tiny_config(**overrides: Any) -> GPTConfig:
    """A 2-layer, 32-wide config: big enough to exercise every code path, small enough to be instant."""
    return GPTConfig(**{**TINY, **overrides})


def _inputs(config: GPTConfig, batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, seq), generator=g)


def check_shapes(model: GPT) -> None:
    """Logits are (batch, seq, vocab) and finite."""
    x = _inputs(model.config)
    logits = model(x)
    expected = (*x.shape, model.config.vocab_size)
    assert tuple(logits.shape) == expected, f"logits shape {tuple(logits.shape)}, expected {expected}"
    assert torch.isfinite(logits).all(), "logits contain NaN or inf"


def check_causality(model: GPT) -> None:
    """Changing a later token never changes an earlier position's logits."""
    x = _inputs(model.config)
    cut = x.shape[1] // 2
    y = x.clone()
    y[:, cut:] = (y[:, cut:] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(x), model(y)
    diff = (a[:, :cut] - b[:, :cut]).abs().max().item()
    assert diff < 1e-5, f"positions before {cut} changed by {diff:.3g} when later tokens changed"
    assert (a[:, cut:] - b[:, cut:]).abs().max().item() > 0, "later tokens have no effect on the logits"


def check_backward(model: GPT) -> None:
    """The loss back-propagates finite gradients into every parameter that is used."""
    model.train()
    model.zero_grad(set_to_none=True)
    x = _inputs(model.config)
    loss = model.loss(x[:, :-1], x[:, 1:])
    loss.backward()
    assert torch.isfinite(loss), f"loss is {loss.item()}"
    for name, p in model.named_parameters():
        assert p.grad is not None, f"parameter {name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"gradient of {name} is not finite"
    model.zero_grad(set_to_none=True)
    model.eval()


def check_train_step(model: GPT, steps: int = 5) -> None:
    """A few AdamW steps on one batch lower its loss: the component trains, not just differentiates.

    Works on a copy, so the model passed in is left as it was.
    """
    model = copy.deepcopy(model).train()
    x = _inputs(model.config, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model.loss(x[:, :-1], x[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = model.loss(x[:, :-1], x[:, 1:]).item()
    assert final < losses[0], f"{steps} optimizer steps did not lower the loss ({losses[0]:.4f} -> {final:.4f})"
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"parameter {name} is not finite after training"


def check_cache(model: GPT, atol: float = 1e-4) -> None:
    """Decoding token by token with the KV cache gives the logits of a full recompute, padded or not."""
    x = _inputs(model.config)
    with torch.no_grad():
        full = model(x)
        logits, past = model.forward_cached(x[:, :5])
        steps = [logits]
        for t in range(5, x.shape[1]):
            logits, past = model.forward_cached(x[:, t : t + 1], past)
            steps.append(logits)
        diff = (torch.cat(steps, dim=1) - full).abs().max().item()
        assert diff < atol, f"cached decoding differs from recompute by {diff:.3g}"
        # A left-padded row must give the logits of the same tokens unpadded.
        mask = torch.ones_like(x)
        mask[1, :3] = 0
        padded = model(x, attention_mask=mask)
        alone = model(x[1:, 3:])
        diff = (padded[1, 3:] - alone[0]).abs().max().item()
        assert diff < atol, f"left-padded row differs from the unpadded one by {diff:.3g}"


def check_save_load(model: GPT) -> None:
    """Saving and loading a model directory gives the same config and logits."""
    from .checkpoints import load_model, save_model

    x = _inputs(model.config)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        save_model(model, tmp, force=True)
        loaded = load_model(tmp)
        assert loaded.config == model.config, "config changed in the round trip"
        diff = (loaded(x) - model(x)).abs().max().item()
        assert diff == 0.0, f"loaded model's logits differ by {diff:.3g}"


def check_onnx(model: GPT, atol: float = 1e-4) -> None:
    """The KV-cache ONNX export runs under onnxruntime (CPU) within ``atol`` of torch: prefill, cached
    decode steps and left-padded rows (the cases of ``gpt2reg.onnx.validate_onnx``)."""
    from .onnx import export_onnx, validate_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", kv_cache=True)
        report = validate_onnx(path, model, provider="cpu", atol=atol)
    assert report.passed, (
        f"ONNX export differs from torch: max |diff| {report.max_abs_diff:.3g} (atol {atol:g})"
        + (f"; {report.reason}" if report.reason else "")
    )


CHECKS: dict[str, Callable[[GPT], None]] = {
    "shapes": check_shapes,
    "causality": check_causality,
    "backward": check_backward,
    "train_step": check_train_step,
    "cache": check_cache,
    "save_load": check_save_load,
    "onnx": check_onnx,
}
SLOW_CHECKS = ("onnx",)  # seconds, not milliseconds: gpt2reg's own suite runs them once per component


def check_component(
    kind: str,
    name: str,
    checks: Iterable[str] | None = None,
    **config_overrides: Any,
) -> None:
    """Build a tiny model with component ``name`` of ``kind`` ("pos", "act", "norm") and run ``checks``.

    ``checks`` defaults to all of ``CHECKS``; ``config_overrides`` adjust the tiny config (e.g. a
    component that needs a wider head, or other components to combine with). Weights are drawn with
    ``init_std=CHECK_INIT_STD`` unless overridden, so that a wrong result is large enough to see.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind '{kind}'; choose one of: {', '.join(KINDS)}")
    for check in checks or CHECKS:
        if check not in CHECKS:
            raise ValueError(f"unknown check '{check}'; choose one of: {', '.join(CHECKS)}")
    what = f"{kind} '{name}'"
    for check in checks or CHECKS:
        try:
            config = tiny_config(**{"init_std": CHECK_INIT_STD, kind: name, **config_overrides})
            model = build_model(config, seed=0).eval()
        except Exception as exc:  # a component that cannot even be built fails the first property
            raise AssertionError(f"{check}: {what} could not be built: {first_line(exc, with_type=True)}{_hint(kind, exc)}") from exc
        try:
            CHECKS[check](model)
        except AssertionError as exc:
            raise AssertionError(f"{check}: {what}: {exc}{_hint(kind, exc, check)}") from exc
        except Exception as exc:  # the component raised from inside the model: still a failed property
            raise AssertionError(f"{check}: {what} raised {first_line(exc, with_type=True)}{_hint(kind, exc, check)}") from exc


def _hint(kind: str, exc: BaseException, check: str = "") -> str:
    """A likely cause, where the symptom points at one (shapes, the cache offset)."""
    text = str(exc).lower()
    shapes = any(word in text for word in ("shape", "size of tensor", "mat1 and mat2", "must match"))
    if kind == "act" and shapes:
        return (" (did you forget gated = True? A gated activation gets the doubled up-projection and must "
                "return half of it; a plain one must return its input's width)")
    if kind == "pos" and shapes:
        return (" (embed(x, positions) gets (batch, seq, n_embd); rotate(q, k, positions) gets "
                "(batch, heads, seq, head_dim); score_bias must broadcast to (batch, heads, q_len, k_len))")
    if kind == "pos" and check == "cache":
        return (" (with a KV cache, positions continue from the cached length and skip left padding: use the "
                "positions argument, never arange(seq))")
    if kind == "norm" and shapes:
        return " (a norm takes and returns (..., n_embd))"
    return ""


def plugin_components(plugin: str) -> list[tuple[str, str]]:
    """``(kind, name)`` of every component ``plugin`` has in the registry, e.g. to parametrise a test.

    ``plugin`` is its entry-point name (``alibi``) or its distribution's (``gpt2reg-alibi``).
    """
    from .plugins import canonical_name, get_registry

    wanted = canonical_name(plugin)
    found = [(c.kind, c.name) for c in get_registry().components()
             if c.plugin == plugin or canonical_name(c.distribution or "") == wanted]
    if not found:
        raise ValueError(f"plugin '{plugin}' has no registered components (is it installed and loaded?)")
    return found
