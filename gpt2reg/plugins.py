"""The plugin manager: built-ins first, then ``gpt2reg`` entry points one at a time, failures recorded.

Nothing here runs at import time: the first ``get_registry()`` (or ``list_plugins()``) discovers the
plugins, so ``gpt2reg --help`` never imports one. Components are registered as ``"module:attr"``
strings, so discovery imports only each plugin's small hook module, never torch.

Environment:

- ``GPT2REG_LOAD_PLUGINS``: comma-separated allow-list of third-party plugins (entry-point or
  distribution names); set but empty loads the built-ins only. Plugins left out are listed as disabled.
- ``GPT2REG_STRICT_PLUGINS=1``: a plugin that fails to import or register is an error instead of a
  warning on stderr.
- ``GPT2REG_PLUGIN_IMPORT_TIMEOUT``: seconds a plugin's import may take (default 30); a slower one is
  skipped as failed, so a plugin that hangs at import cannot hang ``components``, ``train`` or ``serve``.

Each plugin is imported in a thread of its own (that is how its time is limited), and what it prints
while importing goes to stderr: stdout stays the command's, machine-readable with ``--json``.

Name collisions, whatever the load order: a name registered by two plugins is an error for the later
one (built-ins, then entry points by name, then in-process plugins), naming both, and that plugin's
registrations are all dropped. A plugin passing ``override=True`` replaces the component of that name;
two plugins overriding one name is an error for the later one. A plugin's registrations are kept
whole or not at all.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import KINDS, NAME_RE, Component, Registry

ENTRY_POINT_GROUP = "gpt2reg"
BUILTIN_MODULE = "gpt2reg.components"
DISTRIBUTION = "gpt2reg"
HOOKS = tuple(hook for hook, _label in KINDS.values())
IMPORT_TIMEOUT_S = 30.0  # GPT2REG_PLUGIN_IMPORT_TIMEOUT overrides it


@dataclass
class PluginInfo:
    """What ``gpt2reg plugins`` shows for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    source: str = "entry point"  # or "in-process"
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)  # "kind:name" in the registry now
    error: str | None = None
    status: str = "loaded"  # "failed" (see error) or "disabled" (left out by GPT2REG_LOAD_PLUGINS)
    overridden: list[str] = field(default_factory=list)  # "kind:name by plugin": replaced by another plugin
    value: str | None = None  # the entry point's target, e.g. "gpt2reg_alibi.plugin"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "source": self.source,
            "value": self.value,
            "status": self.status,
            "hooks": self.hooks,
            "components": self.components,
            "overridden": self.overridden,
            "error": self.error,
        }


class _State:
    def __init__(self) -> None:
        self.infos: dict[str, PluginInfo] = {}
        self.registry: Registry | None = None
        self.in_process: list[tuple[str, Any]] = []
        self.warned: set[str] = set()  # each warning once per process, however often we rebuild
        self.targets_checked = False


_state = _State()


def _strict() -> bool:
    return os.environ.get("GPT2REG_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def canonical_name(name: str) -> str:
    """Distribution-name normalisation (PEP 503), so ``gpt2reg_alibi`` matches ``gpt2reg-alibi``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _allow_list() -> set[str] | None:
    allow = os.environ.get("GPT2REG_LOAD_PLUGINS")
    if allow is None:
        return None
    return {canonical_name(n.strip()) for n in allow.split(",") if n.strip()}


def _warn(message: str) -> None:
    if message not in _state.warned:
        _state.warned.add(message)
        print(f"gpt2reg: warning: {message}", file=sys.stderr)


def _fail(info: PluginInfo, message: str) -> None:
    info.status, info.error = "failed", message
    if _strict():
        raise PluginError(f"plugin {_label(info)} failed: {message} (GPT2REG_STRICT_PLUGINS is set)")
    if info.source != "in-process":  # register_plugin raises instead
        _warn(f"plugin {_label(info)} failed and was skipped: {message}")


def _label(info: PluginInfo) -> str:
    extra = info.distribution if info.distribution and info.distribution != info.name else None
    return f"'{info.name}'" + (f" ({extra})" if extra else "")


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _add(pm: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> None:
    """Register ``plugin`` with pluggy, rejecting hooks gpt2reg does not define (usually a typo)."""
    try:
        unknown = sorted(
            attr for attr in dir(plugin) if pm.parse_hookimpl_opts(plugin, attr) is not None and attr not in HOOKS
        )
        if unknown:
            raise PluginError(f"implements unknown hook(s) {', '.join(unknown)}; gpt2reg's hooks are {', '.join(HOOKS)}")
        pm.register(plugin, name=info.name)
    except PluginError as exc:
        _fail(info, str(exc))
    except Exception as exc:  # pluggy's validation: bad hook arguments, the same plugin twice
        _fail(info, f"could not be registered: {exc}")


def _entry_points() -> list[metadata.EntryPoint]:
    """Our group's entry points, sorted by name. One installed distribution with a malformed
    ``entry_points.txt`` (any group) breaks ``entry_points()`` as a whole, so then read them one by one."""
    try:
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:
        eps, seen = [], set()
        for dist in metadata.distributions():
            name = canonical_name(dist.metadata["Name"] or "")
            if name in seen:
                continue  # importlib.metadata's rule: the first distribution of a name on sys.path wins
            seen.add(name)
            try:
                eps += [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            except Exception as exc:
                _warn(f"distribution '{name}' has an unreadable entry_points.txt, skipped: {type(exc).__name__}: {exc}")
    return sorted(eps, key=lambda ep: ep.name)


def _import_timeout() -> float:
    text = os.environ.get("GPT2REG_PLUGIN_IMPORT_TIMEOUT", "").strip()
    if not text:
        return IMPORT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e6:
        raise PluginError(f"GPT2REG_PLUGIN_IMPORT_TIMEOUT={text!r}: give the seconds a plugin's import may take "
                          f"(a number > 0; default {IMPORT_TIMEOUT_S:g})")
    return seconds


class _ImportOutput:
    """``sys.stdout`` while plugins import: a plugin-import thread's writes go to stderr, others' to stdout."""

    def __init__(self, stdout: Any) -> None:
        self.stdout = stdout
        self.importers: set[int] = set()

    def _target(self) -> Any:
        return sys.stderr if threading.get_ident() in self.importers else self.stdout

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:  # encoding, buffer, isatty...: the real stdout's
        return getattr(self.stdout, name)


@contextmanager
def _quiet_imports() -> Iterator[_ImportOutput]:
    """Divert what plugin imports print; left in place for an import still running (it timed out)."""
    output = _ImportOutput(sys.stdout)
    sys.stdout = output
    try:
        yield output
    finally:
        if sys.stdout is output and not output.importers:
            sys.stdout = output.stdout


def _timed_load(ep: metadata.EntryPoint, output: _ImportOutput, timeout: float) -> Any:
    """``ep.load()`` in a thread of its own, at most ``timeout`` seconds; raises what the import raised, or
    ``TimeoutError`` (the thread is left to finish or hang on its own: a daemon, it does not hold exit)."""
    result: dict[str, Any] = {}

    def load() -> None:
        output.importers.add(threading.get_ident())
        try:
            result["plugin"] = ep.load()
        except BaseException as exc:  # SystemExit too: a plugin must not end the CLI
            result["error"] = exc
        finally:
            output.importers.discard(threading.get_ident())

    thread = threading.Thread(target=load, name=f"gpt2reg-plugin-{ep.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in result:
        raise result["error"]
    return result["plugin"]


def _load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    timeout = _import_timeout()
    with _quiet_imports() as output:
        _load_each(pm, infos, output, timeout)


def _load_each(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], output: _ImportOutput, timeout: float) -> None:
    allow = _allow_list()
    matched = {DISTRIBUTION}  # the built-ins always load; naming them in the allow-list is harmless
    builtin_loaded = False
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else None
        builtin = dist is not None and canonical_name(dist) == DISTRIBUTION
        if builtin and builtin_loaded:
            continue  # the same distribution found twice on sys.path (editable install + source tree)
        info = PluginInfo(
            name=ep.name if ep.name not in infos else f"{dist}:{ep.name}",
            distribution=dist,
            version=ep.dist.version if ep.dist is not None else None,
            builtin=builtin,
            value=ep.value,
        )
        infos[info.name] = info
        if not builtin and allow is not None:
            keys = {canonical_name(ep.name), canonical_name(dist or "")} & allow
            if not keys:
                info.status = "disabled"
                continue
            matched |= keys
        try:
            plugin = _timed_load(ep, output, timeout)
        except TimeoutError:
            _fail(info, f"import of '{ep.value}' took longer than {timeout:g} s (GPT2REG_PLUGIN_IMPORT_TIMEOUT)")
            continue
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the CLI down with it
            _fail(info, f"import of '{ep.value}' failed: {type(exc).__name__}: {exc}")
            continue
        _add(pm, plugin, info)
        builtin_loaded = builtin_loaded or (builtin and info.status == "loaded")
    if not builtin_loaded and DISTRIBUTION not in infos:
        # Running from a source tree that was never installed: no entry points exist, so register
        # the built-in module directly - the same hooks, just found without metadata.
        import importlib

        info = PluginInfo(name=DISTRIBUTION, distribution=DISTRIBUTION, builtin=True, value=BUILTIN_MODULE)
        infos[info.name] = info
        _add(pm, importlib.import_module(BUILTIN_MODULE), info)
    for name in sorted((allow or set()) - matched):
        message = f"GPT2REG_LOAD_PLUGINS names '{name}', which no installed gpt2reg plugin provides"
        if _strict():
            raise PluginError(f"{message} (GPT2REG_STRICT_PLUGINS is set); install it or correct the name")
        _warn(message)


def _ordered(infos: dict[str, PluginInfo]) -> list[PluginInfo]:
    """Registration order: built-ins, entry points by name, then in-process plugins as registered."""
    return sorted(infos.values(), key=lambda i: (not i.builtin, i.source != "entry point"))


def _collect(pm: pluggy.PluginManager, info: PluginInfo) -> list[Component]:
    """Call ``info``'s hook implementations with a ``register`` bound to each kind; validate what they give."""
    staged: list[Component] = []
    for kind, (hook_name, label) in KINDS.items():
        impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin_name == info.name]
        for impl in impls:
            info.hooks.append(hook_name)

            def register(
                name: str,
                component: str | Callable[..., Any],
                *,
                description: str = "",
                override: bool = False,
                _kind: str = kind,
                _label: str = label,
            ) -> None:
                if not isinstance(name, str) or not NAME_RE.match(name):
                    raise PluginError(f"invalid {_label} name {name!r}: use [a-z][a-z0-9_]*")
                if not (isinstance(component, str) and ":" in component) and not callable(component):
                    raise PluginError(f"{_label} '{name}': give a class, a factory or a 'module:attr' string")
                staged.append(Component(_kind, name, component, str(description), info.name, bool(override),
                                        distribution=info.distribution))

            impl.function(**{arg: register for arg in impl.argnames if arg == "register"})
    return staged


def _register_components(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> Registry:
    staged: dict[str, list[Component]] = {}
    for info in _ordered(infos):
        if info.status != "loaded":
            continue
        try:
            staged[info.name] = _collect(pm, info)
        except Exception as exc:
            message = str(exc) if isinstance(exc, PluginError) else f"registration raised {type(exc).__name__}: {exc}"
            _fail(info, message)

    base: dict[tuple[str, str], Component] = {}
    overrides: dict[tuple[str, str], Component] = {}
    for info in _ordered(infos):
        if info.name not in staged:
            continue
        mine: dict[tuple[str, str], Component] = {}
        error = None
        for comp in staged[info.name]:
            key, label = (comp.kind, comp.name), KINDS[comp.kind][1]
            table = overrides if comp.override else base
            if key in mine:
                error = f"registers {label} '{comp.name}' twice"
            elif key in table:
                other = infos[table[key].plugin]
                if comp.override:
                    error = f"plugins {_label(other)} and {_label(info)} both override {label} '{comp.name}'; only one may"
                else:
                    error = (
                        f"{label} '{comp.name}' is already registered by plugin {_label(other)}; plugin "
                        f"{_label(info)} registers it too (rename it, or register it with override=True to replace it)"
                    )
            if error:
                break
            mine[key] = comp
        if error:
            _fail(info, error)
            continue
        for key, comp in mine.items():
            (overrides if comp.override else base)[key] = comp

    registry = Registry()
    for key, comp in base.items():
        replacement = overrides.get(key)
        if replacement is not None:
            replacement.replaces = comp.plugin
            infos[comp.plugin].overridden.append(f"{comp.kind}:{comp.name} by {replacement.plugin}")
        registry.add(replacement or comp)
    for key, comp in overrides.items():
        if key not in base:
            registry.add(comp)  # an override of a name nobody else registers is simply a registration
    for comp in registry.components():
        infos[comp.plugin].components.append(f"{comp.kind}:{comp.name}")
    return registry


def _build() -> None:
    pm = _new_manager()
    infos: dict[str, PluginInfo] = {}
    _load_entry_points(pm, infos)
    for name, plugin in _state.in_process:
        info = PluginInfo(name=name, source="in-process")
        infos[name] = info
        _add(pm, plugin, info)
    registry = _register_components(pm, infos)
    registry.missing_hint = _missing_hint
    _state.infos, _state.registry = infos, registry


def _names_of(info: PluginInfo) -> set[tuple[str, str]]:
    """(kind, name) a plugin that was not loaded would register: its hooks called with a recording
    ``register`` (this imports its hook module, never its components)."""
    import importlib

    if not info.value:
        return set()
    module_name, _, attr = info.value.partition(":")
    found: set[tuple[str, str]] = set()
    try:
        plugin: Any = importlib.import_module(module_name)
        for part in filter(None, attr.split(".")):
            plugin = getattr(plugin, part)
        for kind, (hook, _label) in KINDS.items():
            impl = getattr(plugin, hook, None)
            if callable(impl):
                impl(register=lambda name, *_a, _kind=kind, **_kw: found.add((_kind, name)))
    except (Exception, SystemExit):
        return set()
    return found


def _missing_hint(kind: str, name: str) -> str:
    """What to add to "unknown component": the disabled plugin that has it, or the plugins that failed."""
    for info in _state.infos.values():
        if info.status == "disabled" and (kind, name) in _names_of(info):
            return (f"; plugin '{info.name}' ({info.distribution}) provides it but GPT2REG_LOAD_PLUGINS leaves it "
                    f"out: add {info.name} to GPT2REG_LOAD_PLUGINS, or unset the variable")
    failed = sorted(i.name for i in _state.infos.values() if i.status == "failed")
    if failed:
        return f"; plugin(s) {', '.join(failed)} failed to load and may provide it (see `gpt2reg plugins`)"
    return ""


def get_registry() -> Registry:
    """The registry of every component the loaded plugins provide (discovered on first call)."""
    if _state.registry is None:
        _build()
    assert _state.registry is not None
    return _state.registry


def _unresolvable(target: str) -> str:
    """Why ``"module:attr"`` cannot resolve ("" if it looks fine), found without running the module:
    its spec is looked up (importing only parent packages) and its source parsed for ``attr``."""
    import ast
    import importlib.util

    module_name, _, attr = target.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        return f"module '{module_name}' cannot be found ({type(exc).__name__}: {exc})"
    if spec is None:
        return f"no module named '{module_name}'"
    if not attr or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    try:
        tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    except (OSError, SyntaxError, ValueError) as exc:
        return f"module '{module_name}' cannot be read ({type(exc).__name__}: {exc})"
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    first = attr.split(".")[0]
    if first not in names and not any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)
                                       for n in tree.body):
        return f"module '{module_name}' defines no '{first}'"
    return ""


def _check_targets() -> None:
    """Mark plugins whose registered ``"module:attr"`` paths do not resolve as failed (once per build)."""
    if _state.targets_checked:
        return
    _state.targets_checked = True
    assert _state.registry is not None
    for comp in _state.registry.components():
        if not isinstance(comp.target, str):
            continue
        problem = _unresolvable(comp.target)
        info = _state.infos.get(comp.plugin)
        if problem and info is not None and info.status == "loaded":
            _fail(info, f"{KINDS[comp.kind][1]} '{comp.name}' is registered as '{comp.target}', but {problem}")


def list_plugins() -> list[PluginInfo]:
    """Every plugin found - loaded, failed or disabled - built-ins first.

    Registered ``"module:attr"`` paths are checked too (without importing the component modules):
    a plugin whose path does not resolve is listed as failed.
    """
    get_registry()
    _check_targets()
    return sorted(_state.infos.values(), key=lambda i: (not i.builtin, i.source != "entry point", i.name))


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a module or object implementing the hooks, in this process only (notebooks, tests).

    Raises ``PluginError`` (and registers nothing) when the plugin fails to register, e.g. a name
    collision. Returns the plugin's name; pass it (or the plugin) to ``unregister_plugin`` to remove it.
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    get_registry()
    if name in _state.infos or any(n == name for n, _ in _state.in_process):
        raise PluginError(f"a plugin named '{name}' is already registered; pass another name=")
    _state.in_process.append((name, plugin))
    reset()
    try:
        get_registry()
        info = _state.infos[name]
        if info.status == "failed":
            raise PluginError(f"plugin '{name}' failed: {info.error}")
    except BaseException:
        _state.in_process = [(n, p) for n, p in _state.in_process if n != name]
        reset()
        raise
    return name


def unregister_plugin(name_or_plugin: Any) -> None:
    """Remove a plugin added with ``register_plugin`` (by name or by the object itself)."""
    before = len(_state.in_process)
    _state.in_process = [(n, p) for n, p in _state.in_process if n != name_or_plugin and p is not name_or_plugin]
    if len(_state.in_process) == before:
        raise PluginError(f"no in-process plugin '{name_or_plugin}' is registered")
    reset()


@contextmanager
def plugin_registered(plugin: Any, name: str | None = None) -> Iterator[str]:
    """``with plugin_registered(obj):`` - ``register_plugin`` for the block, unregistered afterwards."""
    registered = register_plugin(plugin, name)
    try:
        yield registered
    finally:
        unregister_plugin(registered)


def reset() -> None:
    """Forget the loaded plugins so the next lookup discovers them again (keeps in-process ones)."""
    _state.registry = None
    _state.infos = {}
    _state.targets_checked = False
