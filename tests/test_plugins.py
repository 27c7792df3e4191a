"""Plugin loading survives broken plugins, enforces the naming rules, and is documented hook by hook.

"Installed" plugins are real distributions: a module plus a ``*.dist-info`` with ``entry_points.txt``
in a temporary directory put on ``PYTHONPATH`` of a ``gpt2reg`` subprocess - what ``pip install``
leaves behind, minus the copying.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import gpt2reg
from gpt2reg import hookspecs
from gpt2reg.errors import PluginError
from gpt2reg.plugins import HOOKS, get_registry, list_plugins, plugin_registered
from gpt2reg.registry import KINDS
from gpt2reg.testing import CHECKS

ROOT = Path(__file__).resolve().parents[1]

FAKE_PLUGINS = {
    # dist name: (entry-point name, module source)
    "broken-plugin": ("broken", "raise RuntimeError('boom at import')\n"),
    "exiting-plugin": ("exiting", "import sys\nsys.exit(3)\n"),
    "dup-plugin": (
        "dup",
        "import gpt2reg\n\n"
        "@gpt2reg.hookimpl\n"
        "def register_activations(register):\n"
        "    register('dup_extra', 'gpt2reg.components.activations:Relu')\n"
        "    register('relu', 'gpt2reg.components.activations:Relu')\n",
    ),
    "good-plugin": (
        "good",
        "import gpt2reg\n\n"
        "@gpt2reg.hookimpl\n"
        "def register_norms(register):\n"
        "    register('good_norm', 'gpt2reg.components.norms:RMSNorm', description='an RMSNorm under another name')\n"
        "\n"
        "@gpt2reg.hookimpl\n"
        "def register_activations(register):\n"
        "    register('gelu', 'gpt2reg.components.activations:Relu', override=True)\n",
    ),
}


def _install(root: Path, dist: str, ep_name: str, source: str, version: str = "1.2.3") -> None:
    module = dist.replace("-", "_")
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[gpt2reg]\n{ep_name} = {module}\n")


def install_site(root: Path, plugins: dict[str, tuple[str, str]]) -> Path:
    """A folder to put on sys.path holding ``plugins`` (dist name: (entry-point name, module source))."""
    for dist, (ep_name, source) in plugins.items():
        _install(root, dist, ep_name, source)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install_site(tmp_path_factory.mktemp("site"), FAKE_PLUGINS)


def gpt2reg_cli(site: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPT2REG_")}
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(site), environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "gpt2reg", *args], capture_output=True, text=True, env=environ, timeout=120
    )


def plugins_json(site: Path, **env: str) -> dict[str, dict]:
    result = gpt2reg_cli(site, "plugins", "--json", **env)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


# -- installed plugins, through the CLI -----------------------------------------------------------


def test_help_works_with_broken_plugins_installed(site: Path) -> None:
    for args in (["--help"], ["build", "--help"], ["plugins", "--help"]):
        result = gpt2reg_cli(site, *args)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout


def test_broken_plugins_warn_and_the_rest_loads(site: Path) -> None:
    result = gpt2reg_cli(site, "components", "--json")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("gpt2reg: warning:")]
    assert len(warnings) == 3, result.stderr  # broken, exiting, dup; each once
    assert any("'broken' (broken-plugin)" in w and "RuntimeError: boom at import" in w for w in warnings)
    assert any("'exiting'" in w and "SystemExit: 3" in w for w in warnings)
    dup = next(w for w in warnings if "'dup'" in w)
    assert "activation 'relu' is already registered by plugin 'gpt2reg'" in dup and "override=True" in dup

    components = {(c["kind"], c["name"]): c for kind in json.loads(result.stdout).values() for c in kind}
    assert components[("act", "relu")]["plugin"] == "gpt2reg"
    assert ("act", "dup_extra") not in components  # a failed plugin registers nothing at all
    assert components[("norm", "good_norm")]["plugin"] == "good"
    # The override rule: 'good' replaced the built-in gelu, and says so.
    assert components[("act", "gelu")]["plugin"] == "good"
    assert components[("act", "gelu")]["replaces"] == "gpt2reg"


def test_plugins_json_shows_failures_and_providers(site: Path) -> None:
    plugins = plugins_json(site)
    broken = plugins["broken"]
    assert broken["status"] == "failed" and broken["components"] == []
    assert broken["distribution"] == "broken-plugin" and broken["version"] == "1.2.3"
    assert "RuntimeError: boom at import" in broken["error"]
    assert plugins["dup"]["status"] == "failed" and "'gpt2reg'" in plugins["dup"]["error"]
    assert plugins["dup"]["hooks"] == ["register_activations"]
    good = plugins["good"]
    assert good["status"] == "loaded" and good["error"] is None
    assert good["hooks"] == ["register_activations", "register_norms"]
    assert sorted(good["components"]) == ["act:gelu", "norm:good_norm"]
    builtin = plugins["gpt2reg"]
    assert builtin["builtin"] and builtin["status"] == "loaded" and builtin["version"] == gpt2reg.__version__
    assert "act:gelu by good" in builtin["overridden"] and "act:gelu" not in builtin["components"]
    assert set(builtin["hooks"]) == set(HOOKS)


def test_plugins_text_output(site: Path) -> None:
    result = gpt2reg_cli(site, "plugins")
    assert result.returncode == 0
    assert re.search(r"^broken  \(broken-plugin 1\.2\.3, entry point\)  FAILED$", result.stdout, re.M)
    assert "  error: import of 'broken_plugin' failed: RuntimeError: boom at import" in result.stdout
    assert "  components: act:gelu, norm:good_norm" in result.stdout


def test_strict_mode_turns_a_failure_into_an_error(site: Path) -> None:
    result = gpt2reg_cli(site, "components", GPT2REG_STRICT_PLUGINS="1")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: plugin 'broken' (broken-plugin) failed: import of 'broken_plugin'")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # Only the failing plugins make it fail: allow-listing the good one passes in strict mode.
    ok = gpt2reg_cli(site, "components", GPT2REG_STRICT_PLUGINS="1", GPT2REG_LOAD_PLUGINS="good")
    assert ok.returncode == 0 and "good_norm" in ok.stdout and ok.stderr == ""


def test_allow_list(site: Path) -> None:
    none = plugins_json(site, GPT2REG_LOAD_PLUGINS="")
    assert none["gpt2reg"]["status"] == "loaded"
    assert {p["status"] for name, p in none.items() if name != "gpt2reg"} == {"disabled"}
    # By distribution name, either spelling; an unknown name is a warning, not an error.
    result = gpt2reg_cli(site, "plugins", "--json", GPT2REG_LOAD_PLUGINS="good_plugin, nosuch")
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["good"]["status"] == "loaded" and plugins["broken"]["status"] == "disabled"
    assert "GPT2REG_LOAD_PLUGINS names 'nosuch'" in result.stderr and "broken" not in result.stderr


def test_a_malformed_entry_points_file_elsewhere_is_skipped(site: Path, tmp_path: Path) -> None:
    """Any distribution's broken entry_points.txt breaks importlib.metadata.entry_points() as a whole."""
    info = tmp_path / "mangled-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mangled\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[console_scripts]\nno equals sign here\n")
    result = gpt2reg_cli(None, "components", PYTHONPATH=f"{tmp_path}{os.pathsep}{site}", GPT2REG_LOAD_PLUGINS="good")
    assert result.returncode == 0, result.stderr
    assert "distribution 'mangled' has an unreadable entry_points.txt" in result.stderr
    assert "good_norm" in result.stdout  # the other plugins still load


def test_a_plugin_component_builds_from_the_cli(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    args = ["build", "--norm", "good_norm", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "-o", str(out), "--json"]
    result = gpt2reg_cli(site, *args)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "gpt2reg.json").read_text())["config"]
    assert config["norm"] == "good_norm"


# -- in-process registration ----------------------------------------------------------------------


def _plugin(kind_hook: str, *registrations: tuple) -> object:
    """A plugin object whose ``kind_hook`` registers ``(name, component, kwargs)`` triples."""

    def hook(self, register):
        for name, component, kwargs in registrations:
            register(name, component, **kwargs)

    return type("P", (), {kind_hook: gpt2reg.hookimpl(hook)})()


RELU = "gpt2reg.components.activations:Relu"


def test_register_and_unregister_in_process() -> None:
    plugin = _plugin("register_activations", ("my_act", RELU, {"description": "mine"}))
    assert get_registry().find("act", "my_act") is None
    name = gpt2reg.register_plugin(plugin, name="mine")
    try:
        component = get_registry().get("act", "my_act")
        assert component.plugin == "mine" and component.description == "mine"
        info = next(i for i in list_plugins() if i.name == "mine")
        assert info.source == "in-process" and info.components == ["act:my_act"]
    finally:
        gpt2reg.unregister_plugin(name)
    assert get_registry().find("act", "my_act") is None
    with pytest.raises(PluginError, match="no in-process plugin"):
        gpt2reg.unregister_plugin(name)


def test_a_module_is_a_plugin_too() -> None:
    module = types.ModuleType("my_norm_plugin")
    module.register_norms = gpt2reg.hookimpl(lambda register: register("my_norm", "gpt2reg.components.norms:RMSNorm"))
    with plugin_registered(module) as name:
        assert name == "my_norm_plugin"
        assert get_registry().get("norm", "my_norm").plugin == "my_norm_plugin"
    assert get_registry().find("norm", "my_norm") is None


def test_collision_names_both_plugins_and_registers_nothing() -> None:
    plugin = _plugin("register_activations", ("fresh", RELU, {}), ("relu", RELU, {}))
    with pytest.raises(PluginError, match=r"'relu' is already registered by plugin 'gpt2reg'; plugin 'clash'"):
        gpt2reg.register_plugin(plugin, name="clash")
    assert get_registry().find("act", "fresh") is None
    assert "clash" not in {i.name for i in list_plugins()}


def test_override_rules_do_not_depend_on_order() -> None:
    # The override comes first, the plain registration of the same name second: the override wins.
    first = _plugin("register_activations", ("shared", RELU, {"override": True}))
    second = _plugin("register_activations", ("shared", "gpt2reg.components.activations:Silu", {}))
    with plugin_registered(first, "first"), plugin_registered(second, "second"):
        component = get_registry().get("act", "shared")
        assert component.plugin == "first" and component.replaces == "second"
        rival = _plugin("register_activations", ("shared", RELU, {"override": True}))
        with pytest.raises(PluginError, match="plugins 'first' and 'rival' both override activation 'shared'"):
            gpt2reg.register_plugin(rival, name="rival")


def test_override_a_builtin() -> None:
    plugin = _plugin("register_norms", ("layernorm", "gpt2reg.components.norms:RMSNorm", {"override": True}))
    with plugin_registered(plugin, "fast-norms"):
        assert get_registry().get("norm", "layernorm").target == "gpt2reg.components.norms:RMSNorm"
        builtin = next(i for i in list_plugins() if i.builtin)
        assert "norm:layernorm by fast-norms" in builtin.overridden
    assert get_registry().get("norm", "layernorm").plugin == "gpt2reg"


@pytest.mark.parametrize(
    "plugin,message",
    [
        (_plugin("register_activation", ("x", RELU, {})), "unknown hook.*register_activation"),
        (_plugin("register_activations", ("Bad-Name", RELU, {})), "invalid activation name 'Bad-Name'"),
        (_plugin("register_activations", ("x", 42, {})), "give a class, a factory or a 'module:attr'"),
        (_plugin("register_activations", ("x", RELU, {}), ("x", RELU, {})), "registers activation 'x' twice"),
        (_plugin("register_norms", ("x", RELU, {"colour": "red"})), "registration raised TypeError"),
    ],
    ids=["unknown-hook", "bad-name", "bad-target", "twice", "bad-kwarg"],
)
def test_invalid_plugins_are_rejected_with_the_reason(plugin: object, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        gpt2reg.register_plugin(plugin, name="invalid")
    assert "invalid" not in {i.name for i in list_plugins()}


def test_a_target_that_does_not_import_fails_when_used_naming_the_plugin() -> None:
    plugin = _plugin("register_norms", ("ghost", "no_such_module.norms:Ghost", {}))
    with plugin_registered(plugin, "ghostly"):
        with pytest.raises(PluginError, match="norm 'ghost' of plugin 'ghostly': cannot load 'no_such_module"):
            get_registry().get("norm", "ghost").load()


def test_names_are_unique_per_process() -> None:
    with plugin_registered(_plugin("register_norms"), "once"):
        with pytest.raises(PluginError, match="already registered"):
            gpt2reg.register_plugin(_plugin("register_norms"), name="once")
    with pytest.raises(PluginError, match="already registered"):
        gpt2reg.register_plugin(_plugin("register_norms"), name="gpt2reg")


# -- the author guide stays in step with the code -------------------------------------------------

GUIDE = ROOT / "docs" / "plugins.md"


def _hookspec_names() -> list[str]:
    import pluggy

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    return sorted(n for n in dir(hookspecs) if pm.parse_hookspec_opts(hookspecs, n) is not None)


def test_every_hook_is_documented_in_the_guide() -> None:
    text = GUIDE.read_text()
    names = _hookspec_names()
    assert names == sorted(HOOKS)  # the loader knows every hook the spec defines
    missing = [n for n in names if f"### `{n}`" not in text]
    assert not missing, f"docs/plugins.md has no section for hook(s): {', '.join(missing)}"


def test_the_guide_covers_every_check_and_kind() -> None:
    text = GUIDE.read_text()
    assert not [c for c in CHECKS if f"| `{c}` |" not in text], "a check of gpt2reg.testing is undocumented"
    assert not [k for k in KINDS if f"--{k} NAME" not in text], "a component kind is undocumented"
    for word in ("GPT2REG_STRICT_PLUGINS", "GPT2REG_LOAD_PLUGINS", "override=True", "register_plugin"):
        assert word in text


def test_the_guide_lists_every_config_field() -> None:
    import dataclasses

    from gpt2reg import GPTConfig

    text = GUIDE.read_text()
    missing = [f.name for f in dataclasses.fields(GPTConfig) if f"`{f.name}`" not in text]
    assert not missing, f"docs/plugins.md does not list GPTConfig field(s) {', '.join(missing)}"


def test_the_guide_is_right_about_init() -> None:
    """What the guide says: GPT-2's init redraws nn.Linear inside components, never a plain nn.Parameter."""
    import torch
    from torch import nn

    import gpt2reg
    from gpt2reg.components.base import Activation

    class Scaled(Activation):
        def __init__(self, config) -> None:
            super().__init__(config)
            self.gate = nn.Linear(config.hidden_size, config.hidden_size)
            nn.init.constant_(self.gate.weight, 3.0)
            self.scale = nn.Parameter(torch.full((1,), 3.0))

        def forward(self, x):
            return self.gate(x) * self.scale

    class Plugin:
        @gpt2reg.hookimpl
        def register_activations(self, register):
            register("scaled_for_guide", Scaled)

    with gpt2reg.plugin_registered(Plugin(), name="guide-init"):
        model = gpt2reg.build_model(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64,
                                    act="scaled_for_guide", seed=0)
    act = model.h[0].mlp.act
    assert act.scale.item() == 3.0
    assert act.gate.weight.std().item() < 0.1 and act.gate.bias.abs().max().item() == 0.0
