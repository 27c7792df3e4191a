"""The model configuration: hyperparameters plus component names as strings, so it serializes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .numbers import check_number

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


@dataclass(frozen=True)
class GPTConfig:
    """A GPT-2 variant. Defaults are GPT-2 small (124M); ``pos``/``act``/``norm`` are registry names."""

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_ratio: float = 4.0
    bias: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    pos: str = "learned"
    act: str = "gelu_tanh"
    norm: str = "layernorm"
    init_std: float = field(default=0.02, metadata={"help": "std of the normal init of weights"})

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_number(name, getattr(self, name), 1, integer=True, error=ConfigError)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head needs an equal share"
            )
        check_number("mlp_ratio", self.mlp_ratio, 0, low_open=True, error=ConfigError)
        if self.hidden_size < 1:
            raise ConfigError(f"mlp_ratio={self.mlp_ratio}: MLP width = mlp_ratio * n_embd must be at least 1")
        check_number("dropout", self.dropout, 0, 1, high_open=True, error=ConfigError)
        check_number("norm_eps", self.norm_eps, 0, low_open=True, error=ConfigError)
        check_number("init_std", self.init_std, 0, low_open=True, error=ConfigError)
        self._check_components()

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                object.__setattr__(self, f.name, value)  # so to_dict() round-trips exactly
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if isinstance(value, bool) and f.type != "bool" or not isinstance(value, expected):
                raise ConfigError(f"{f.name}={value!r}: expected {f.type}")

    def _check_components(self) -> None:
        from .plugins import get_registry

        registry = get_registry()
        for kind in ("pos", "act", "norm"):
            component = registry.get(kind, getattr(self, kind))
            check = getattr(component.load(), "check_config", None)
            if check is not None:
                try:
                    check(self)
                except ValueError as exc:
                    raise ConfigError(f"{kind}={getattr(self, kind)!r} does not fit this config: {exc}") from None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden_size(self) -> int:
        """Width of the MLP's hidden layer (before a gated activation halves the doubled projection)."""
        return int(round(self.mlp_ratio * self.n_embd))

    def replace(self, **overrides: Any) -> GPTConfig:
        return GPTConfig.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_preset(cls, preset: str = "gpt2", **overrides: Any) -> GPTConfig:
        """A preset (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) with any field overridden."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return cls.from_dict({**PRESETS[preset], **overrides})
