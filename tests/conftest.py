"""Shared fixtures: tiny configs so the suite stays fast; full-size runs only where size matters."""

from __future__ import annotations

import pytest

from gpt2reg.testing import TINY  # noqa: F401  (re-exported for tests)


def component_names(kind: str) -> list[str]:
    """Every registered component of ``kind``: tests parametrised by it cover new plugins for free."""
    from gpt2reg.plugins import get_registry

    return get_registry().names(kind)


@pytest.fixture
def tiny_config():
    from gpt2reg.config import GPTConfig

    return GPTConfig(**TINY)
