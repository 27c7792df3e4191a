"""Every registered component (built-in or plugin) gets the same checks, with no new test code."""

from __future__ import annotations

import pytest

from gpt2reg.registry import KINDS
from gpt2reg.testing import CHECKS, SLOW_CHECKS, check_component, component_names

CASES = [(kind, name) for kind in KINDS for name in component_names(kind)]


# The onnx check (~10 s each) is not repeated here: tests/test_onnx.py exports and validates the
# KV-cache graph of every registered component already.
@pytest.mark.parametrize("check", [c for c in CHECKS if c not in SLOW_CHECKS])
@pytest.mark.parametrize("kind,name", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_component(kind: str, name: str, check: str) -> None:
    check_component(kind, name, checks=[check])


def test_every_builtin_is_covered() -> None:
    names = {k: set(component_names(k)) for k in KINDS}
    assert {"learned", "sinusoidal", "rope", "none"} <= names["pos"]
    assert {"gelu_tanh", "gelu", "relu", "silu", "relu2", "swiglu", "geglu"} <= names["act"]
    assert {"layernorm", "rmsnorm"} <= names["norm"]


def test_check_fails_on_a_leaky_component() -> None:
    """The kit must catch a broken component, or it proves nothing."""
    import gpt2reg
    from gpt2reg.components.base import PositionalEncoding

    class Leaky(PositionalEncoding):
        def embed(self, x, positions):  # mixes the future into every position
            return x + x.mean(dim=1, keepdim=True)

    class Plugin:
        @gpt2reg.hookimpl
        def register_positional_encodings(self, register):
            register("leaky", Leaky, description="broken on purpose")

    name = gpt2reg.register_plugin(Plugin(), name="leaky-test")
    try:
        with pytest.raises(AssertionError, match="changed"):
            check_component("pos", "leaky", checks=["causality"])
    finally:
        gpt2reg.unregister_plugin(name)
