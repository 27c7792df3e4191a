"""The plugin manager: built-ins first, then ``gpt2reg`` entry points one at a time, failures recorded.

Environment:

- ``GPT2REG_LOAD_PLUGINS``: comma-separated allow-list of third-party plugins (entry-point or
  distribution names); set but empty loads the built-ins only.
- ``GPT2REG_STRICT_PLUGINS=1``: a plugin that fails to import or register is an error instead of a
  warning.

Name collisions: the first plugin to register a name keeps it; a later plugin registering the same
name fails (its whole registration is rolled back and reported, naming both plugins) unless it
passes ``override=True``, in which case it replaces the earlier component.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import KINDS, NAME_RE, Component, Registry

ENTRY_POINT_GROUP = "gpt2reg"
BUILTIN_MODULE = "gpt2reg.components"
DISTRIBUTION = "gpt2reg"


@dataclass
class PluginInfo:
    """What ``gpt2reg plugins`` shows for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    source: str = "entry point"  # or "in-process"
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "source": self.source,
            "hooks": self.hooks,
            "components": self.components,
            "error": self.error,
        }


class _State:
    def __init__(self) -> None:
        self.pm: pluggy.PluginManager | None = None
        self.infos: dict[str, PluginInfo] = {}
        self.registry: Registry | None = None
        self.in_process: list[tuple[str, Any]] = []


_state = _State()


def _strict() -> bool:
    return os.environ.get("GPT2REG_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def _allowed(names: set[str]) -> bool:
    allow = os.environ.get("GPT2REG_LOAD_PLUGINS")
    if allow is None:
        return True
    wanted = {n.strip() for n in allow.split(",") if n.strip()}
    return bool(wanted & names)


def _fail(info: PluginInfo, message: str) -> None:
    info.error = message
    if _strict():
        raise PluginError(f"plugin '{info.name}' failed: {message} (GPT2REG_STRICT_PLUGINS is set)")
    print(f"gpt2reg: warning: plugin '{info.name}' failed and was skipped: {message}", file=sys.stderr)


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    builtin_seen = False
    for ep in eps:
        dist = ep.dist.name if ep.dist is not None else None
        builtin = dist is not None and dist.replace("_", "-").lower() == DISTRIBUTION
        if builtin and builtin_seen:
            continue  # the same distribution seen twice on sys.path (e.g. editable + source tree)
        if not builtin and not _allowed({ep.name, dist or ""}):
            continue
        info = PluginInfo(
            name=ep.name,
            distribution=dist,
            version=ep.dist.version if ep.dist is not None else None,
            builtin=builtin,
        )
        if ep.name in infos:
            info.name = f"{dist}:{ep.name}"
        infos[info.name] = info
        try:
            module = ep.load()
            pm.register(module, name=info.name)
        except Exception as exc:  # a broken plugin must not take the CLI down with it
            _fail(info, f"import of '{ep.value}' raised {type(exc).__name__}: {exc}")
            continue
        builtin_seen = builtin_seen or builtin
    if not builtin_seen:
        # Running from a source tree that was never installed: no entry points exist, so register
        # the built-in module directly - the same hooks, just found without metadata.
        import importlib

        info = PluginInfo(name=DISTRIBUTION, distribution=DISTRIBUTION, builtin=True)
        infos[info.name] = info
        pm.register(importlib.import_module(BUILTIN_MODULE), name=info.name)


def _plugin_label(info: PluginInfo) -> str:
    return f"'{info.name}'" + (f" ({info.distribution})" if info.distribution and info.distribution != info.name else "")


def _register_components(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> Registry:
    registry = Registry()
    order = sorted(infos.values(), key=lambda i: (not i.builtin, i.source != "entry point"))
    for info in order:
        plugin = pm.get_plugin(info.name)
        if plugin is None or info.error:
            continue
        staged: list[Component] = []

        def register(
            name: str,
            component: str | Callable[..., Any],
            *,
            description: str = "",
            override: bool = False,
            _kind: str = "",
        ) -> None:
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise PluginError(f"invalid {KINDS[_kind][1]} name {name!r}: use lower case letters, digits and _")
            if not (isinstance(component, str) and ":" in component) and not callable(component):
                raise PluginError(f"{KINDS[_kind][1]} '{name}': give a class, a factory or 'module:attr'")
            staged.append(Component(_kind, name, component, description, info.name, override))

        try:
            for kind, (hook_name, _label) in KINDS.items():
                for impl in getattr(pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name != info.name:
                        continue
                    info.hooks.append(hook_name)

                    def bound(name, component, *, description="", override=False, _k=kind):
                        register(name, component, description=description, override=override, _kind=_k)

                    impl.function(*[{"register": bound}[arg] for arg in impl.argnames])
            seen: set[tuple[str, str]] = set()
            for comp in staged:
                key = (comp.kind, comp.name)
                if key in seen:
                    raise PluginError(f"registers {KINDS[comp.kind][1]} '{comp.name}' twice")
                seen.add(key)
                existing = registry.find(comp.kind, comp.name)
                if existing is not None and not comp.override:
                    other = infos[existing.plugin]
                    raise PluginError(
                        f"{KINDS[comp.kind][1]} '{comp.name}' is already registered by plugin "
                        f"{_plugin_label(other)}; plugin {_plugin_label(info)} registers it too "
                        "(rename it, or register with override=True to replace it)"
                    )
        except Exception as exc:
            info.hooks.clear()
            message = str(exc) if isinstance(exc, PluginError) else f"registration raised {type(exc).__name__}: {exc}"
            _fail(info, message)
            continue
        for comp in staged:
            registry.add(comp)
            info.components.append(f"{comp.kind}:{comp.name}")
    return registry


def _build() -> None:
    pm = _new_manager()
    infos: dict[str, PluginInfo] = {}
    _load_entry_points(pm, infos)
    for name, plugin in _state.in_process:
        info = PluginInfo(name=name, source="in-process")
        infos[name] = info
        try:
            pm.register(plugin, name=name)
        except Exception as exc:
            _fail(info, f"could not be registered: {exc}")
    _state.pm, _state.infos = pm, infos
    _state.registry = _register_components(pm, infos)


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager with built-ins, entry points and in-process plugins registered."""
    if _state.pm is None:
        _build()
    assert _state.pm is not None
    return _state.pm


def get_registry() -> Registry:
    """The registry of every component the loaded plugins provide."""
    if _state.registry is None:
        _build()
    assert _state.registry is not None
    return _state.registry


def list_plugins() -> list[PluginInfo]:
    """Every plugin found, loaded or failed, built-ins first."""
    get_registry()
    return sorted(_state.infos.values(), key=lambda i: (not i.builtin, i.name))


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a module or object implementing the hooks, in this process only (notebooks, tests).

    Returns the plugin's name; pass it to ``unregister_plugin`` to remove it again.
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    if any(n == name for n, _ in _state.in_process):
        raise PluginError(f"a plugin named '{name}' is already registered in this process")
    _state.in_process.append((name, plugin))
    reset()
    return name


def unregister_plugin(name_or_plugin: Any) -> None:
    """Remove a plugin added with ``register_plugin`` (by name or by the object itself)."""
    before = len(_state.in_process)
    _state.in_process = [
        (n, p) for n, p in _state.in_process if n != name_or_plugin and p is not name_or_plugin
    ]
    if len(_state.in_process) == before:
        raise PluginError(f"no in-process plugin '{name_or_plugin}' is registered")
    reset()


def reset() -> None:
    """Forget the loaded plugins so the next lookup discovers them again (keeps in-process ones)."""
    _state.pm = None
    _state.registry = None
    _state.infos = {}
