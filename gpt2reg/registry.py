"""Components by kind, filled by plugins through the hooks in ``hookspecs``; lookups by name."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Gpt2regError, PluginError, UnknownComponentError

# kind -> (hook that fills it, words used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "pos": ("register_positional_encodings", "positional encoding"),
    "act": ("register_activations", "activation"),
    "norm": ("register_norms", "norm"),
}

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class Component:
    """One registered component: a name, what builds it, and the plugin it came from."""

    kind: str
    name: str
    target: str | Callable[..., Any]
    description: str = ""
    plugin: str = ""
    override: bool = False
    replaces: str | None = None  # the plugin whose component of this name an override replaced
    distribution: str | None = None  # the installed package the plugin came from, for messages
    _loaded: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    @property
    def target_path(self) -> str:
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"

    @property
    def owner(self) -> str:
        """``plugin 'x' (distribution y)``: whose component this is, for messages."""
        extra = f" (distribution {self.distribution})" if self.distribution and self.distribution != self.plugin else ""
        return f"plugin '{self.plugin}'{extra}"

    def load(self) -> Callable[..., Any]:
        """The class or factory, importing its module on first use."""
        if self._loaded is None:
            if isinstance(self.target, str):
                module_name, _, attr = self.target.partition(":")
                try:
                    obj: Any = importlib.import_module(module_name)
                    for part in attr.split("."):
                        obj = getattr(obj, part)
                except (ImportError, AttributeError) as exc:
                    # The plugin registered a path that does not resolve: say whose it is.
                    raise PluginError(
                        f"{KINDS[self.kind][1]} '{self.name}' of {self.owner}: cannot load "
                        f"'{self.target}': {type(exc).__name__}: {exc}"
                    ) from exc
                self._loaded = obj
            else:
                self._loaded = self.target
        return self._loaded

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
            "plugin": self.plugin,
            "target": self.target_path,
            "override": self.override,
            "replaces": self.replaces,
        }


class Registry:
    """The components of every kind; a plugin manager fills it (see ``gpt2reg.plugins``)."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        # (kind, name) -> more words for "unknown component" (the plugin manager knows disabled plugins)
        self.missing_hint: Callable[[str, str], str] = lambda kind, name: ""

    def add(self, component: Component) -> None:
        self._components[component.kind][component.name] = component

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def components(self, kind: str | None = None) -> list[Component]:
        kinds = [kind] if kind else list(KINDS)
        return [self._components[k][n] for k in kinds for n in self.names(k)]

    def find(self, kind: str, name: str) -> Component | None:
        return self._components[kind].get(name)

    def get(self, kind: str, name: str) -> Component:
        """The component, or an error listing the names that do exist."""
        component = self.find(kind, name)
        if component is None:
            label = KINDS[kind][1]
            choices = ", ".join(self.names(kind)) or "(none registered)"
            raise UnknownComponentError(f"unknown {label} '{name}'; choose one of: {choices}{self.missing_hint(kind, name)}")
        return component

    def create(self, kind: str, name: str, config: Any) -> Any:
        """Build component ``name`` of ``kind`` for ``config``.

        A component that raises while it is built, or builds something of another kind (an
        activation registered as a positional encoding), is a ``PluginError`` naming it and its plugin.
        """
        component = self.get(kind, name)
        factory = component.load()
        label = f"{KINDS[kind][1]} '{name}' of {component.owner}"
        try:
            module = factory(config)
        except Gpt2regError:
            raise
        except Exception as exc:
            raise PluginError(f"{label} failed while being built: {type(exc).__name__}: {_first_line(exc)}; "
                              "the plugin needs fixing (or choose another component)") from exc
        problem = wrong_kind(kind, module)
        if problem:
            raise PluginError(f"{label} is not a {KINDS[kind][1]}: {problem}; the plugin registered it under "
                              f"the wrong hook, or it must subclass the base class of its kind")
        return module


def wrong_kind(kind: str, module: Any) -> str:
    """Why ``module`` cannot serve as a component of ``kind`` ("" when it can): the bases of
    ``gpt2reg.components.base`` declare their kind (``component_kind``); a norm is any other ``nn.Module``."""
    from torch import nn

    bases = {"pos": "PositionalEncoding", "act": "Activation"}
    if not isinstance(module, nn.Module):
        return f"it built a {type(module).__name__}, not a torch nn.Module"
    declared = getattr(module, "component_kind", None)
    if declared in bases and declared != kind:
        return f"{type(module).__name__} is a {bases[declared]} (a {KINDS[declared][1]})"
    if kind in bases and declared != kind:
        return f"{type(module).__name__} does not subclass gpt2reg.components.base.{bases[kind]}"
    return ""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"
