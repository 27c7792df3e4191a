"""What a comparison compares: variants, seeds and the settings every run shares; its run folders and commands.

Variants come from axes that expand to a grid (``{"pos": ["learned", "rope"], "act": [...]}``), from
explicit settings (``"pos=rope,act=swiglu,lr=3e-3"``, any model or training setting ``gpt2reg train``
takes), or from a TOML file. Everything a variant does not set is shared, and what decides the data
and the budget (``SHARED_ONLY``) cannot differ between variants: every run of a seed sees the same
batches, the same validation windows and the same number of tokens.

Each variant x seed is an ordinary ``gpt2reg train`` run in ``DIR/runs/<variant>-s<seed>``, and
``train_command`` is exactly the command that trains it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PRESETS, GPTConfig
from ..errors import ConfigError, Gpt2regError, InputError
from ..tokenizer import EOT_ID
from ..training.config import TrainConfig

PLAN_FILE = "compare.json"
RUNS_DIR = "runs"
AXES = ("pos", "act", "norm")  # the component kinds a grid can span

# Model settings ``gpt2reg train`` takes (its architecture options), and the training settings.
MODEL_KEYS = ("pos", "act", "norm", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "mlp_ratio",
              "dropout", "bias")
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("out_dir", "progress"))
# What decides the data, the evaluation and the budget: the same for every variant, by construction.
SHARED_ONLY = ("data", "max_steps", "batch_size", "grad_accum", "seq_len", "val_fraction", "eval_interval",
               "eval_batches", "seed", "device")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
_FIELD_TYPES = {**{f.name: f.type for f in dataclasses.fields(GPTConfig)},
                **{f.name: f.type for f in dataclasses.fields(TrainConfig)}}


@dataclass(frozen=True)
class Variant:
    """A named set of model/training settings that differ from the shared ones."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)


def parse_value(key: str, value: Any, where: str = "") -> Any:
    """``value`` (text from a command line, or a TOML value) as the type of setting ``key``."""
    kind = _FIELD_TYPES[key]
    context = f" in {where}" if where else ""
    if value is None or isinstance(value, str) and value.lower() == "none":
        if "None" in kind:
            return None
        raise ConfigError(f"{key}=none{context}: {key} needs a value")
    base = kind.replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}{context}: expected {'true/false' if base == 'bool' else base}") from None


def check_settings(settings: dict[str, Any], where: str, *, shared: bool = False) -> dict[str, Any]:
    """Settings with their values typed; a key ``gpt2reg train`` does not take (or, for a variant, one that
    must be shared) is a one-line error naming ``where``."""
    known = set(MODEL_KEYS) | set(TRAIN_KEYS)
    out = {}
    for key, value in settings.items():
        if key not in known:
            raise ConfigError(f"unknown setting '{key}' in {where}; settings: {', '.join(sorted(known))}")
        if not shared and key in SHARED_ONLY:
            raise ConfigError(f"'{key}' in {where}: it decides the data or the budget, so every variant shares "
                              f"it; set it once for the comparison (--{key.replace('_', '-')})")
        out[key] = parse_value(key, value, where)
    return out


def _auto_name(settings: dict[str, Any], raw: dict[str, Any] | None = None) -> str:
    raw = raw or settings
    parts = [str(raw[k]) if k in AXES else f"{k}={raw[k]}" for k in settings]
    return "-".join(parts)


def parse_variant(text: str) -> Variant:
    """``"pos=rope,act=swiglu,lr=3e-3"`` (optionally ``name=...``) as a Variant."""
    raw: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise ConfigError(f"variant '{text}': write KEY=VALUE pairs separated by commas, e.g. pos=rope,lr=3e-3")
        if key in raw:
            raise ConfigError(f"variant '{text}': '{key}' is given twice")
        raw[key] = value.strip()
    name = raw.pop("name", None)
    settings = check_settings(raw, f"variant '{text}'")
    if not settings:
        raise ConfigError(f"variant '{text}': it sets nothing besides its name")
    return Variant(name or _auto_name(settings, raw), settings)


def grid(axes: dict[str, list[str]]) -> list[Variant]:
    """Every combination of the axes' values (first values first: the first variant is the baseline).
    Axes with one value are not part of the names (they are shared settings)."""
    for kind in axes:
        if kind not in AXES:
            raise ConfigError(f"unknown axis '{kind}'; axes: {', '.join(AXES)} (other settings: use variants)")
    named = [k for k, values in axes.items() if len(values) > 1]
    variants = []
    for combo in itertools.product(*axes.values()):
        settings = dict(zip(axes, combo, strict=True))
        variants.append(Variant("-".join(settings[k] for k in named) or "-".join(combo), settings))
    return variants


def split_axis(value: str | None) -> list[str]:
    """``"learned,rope"`` -> ``["learned", "rope"]``; None -> []."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """A comparison file: ``seeds``, ``baseline``, ``match_params``, ``[settings]`` (shared), ``[axes]``
    (lists per component kind) and ``[[variant]]`` tables (``name`` plus settings)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"seeds", "baseline", "match_params", "settings", "axes", "variant"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; "
                          "keys: seeds, baseline, match_params, [settings], [axes], [[variant]]")
    axes = data.get("axes", {})
    for kind, values in axes.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{path}: axes.{kind} must be a list of component names")
    variants = []
    for i, table in enumerate(data.get("variant", [])):
        table = dict(table)
        name = table.pop("name", None)
        settings = check_settings(table, f"{path} variant {name or i + 1}")
        variants.append(Variant(str(name) if name else _auto_name(settings), settings))
    settings = check_settings(data.get("settings", {}), f"{path} [settings]", shared=True)
    return {"seeds": data.get("seeds"), "baseline": data.get("baseline"), "match_params": data.get("match_params"),
            "settings": settings, "axes": axes, "variants": variants}


@dataclass(frozen=True)
class Run:
    """One variant x seed: an ordinary ``gpt2reg train`` run folder."""

    variant: str
    seed: int
    name: str
    dir: Path
    model: GPTConfig
    train: TrainConfig


def count_parameters(config: GPTConfig) -> int:
    """Distinct parameters of the model ``config`` builds (built on the meta device: no memory, no init)."""
    from ..checkpoints import meta_model

    return meta_model(config).num_parameters()


def _gated(act: str) -> bool:
    from ..plugins import get_registry

    return bool(getattr(get_registry().get("act", act).load(), "gated", False))


class Comparison:
    """Variants x seeds over shared settings, validated as a whole: every variant's model is built (on the
    meta device) and its training settings checked before anything trains."""

    def __init__(self, out_dir: str | os.PathLike, variants: list[Variant], *, settings: dict[str, Any] | None = None,
                 preset: str = "gpt2", seeds: int | list[int] = 1, baseline: str | None = None,
                 match_params: bool = False) -> None:
        settings = check_settings(dict(settings or {}), "the shared settings", shared=True)
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
        if not settings.get("data"):
            raise InputError("no training data: pass --data PATH (a text file or a folder of them)")
        from ..training.data import text_files

        text_files(settings["data"])  # a missing corpus fails now, not in every run
        settings["data"] = str(Path(settings["data"]).expanduser().resolve())
        if not variants:
            raise ConfigError("nothing to compare: give axes (--pos learned,rope ...), --variant or a TOML file")
        names = [v.name for v in variants]
        for name in names:
            if not _NAME_RE.match(name):
                raise ConfigError(f"variant name '{name}': use letters, digits and _ . = + - (it names run folders)")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"variant name(s) given twice: {', '.join(duplicates)}; name them with name=...")
        self.seeds = list(range(settings.get("seed", 0), settings.get("seed", 0) + seeds)) if isinstance(seeds, int) \
            else list(seeds)
        if not self.seeds:
            raise ConfigError("seeds: need at least one")
        if baseline is not None and baseline not in names:
            raise ConfigError(f"baseline '{baseline}' is not a variant; variants: {', '.join(names)}")
        if baseline is not None:  # the baseline goes first
            variants = sorted(variants, key=lambda v: v.name != baseline)
        self.out_dir = Path(out_dir)
        self.preset = preset
        self.settings = settings
        self.variants = variants
        self.match_params = match_params
        self.models: dict[str, GPTConfig] = {}
        self.trains: dict[str, TrainConfig] = {}
        self.params: dict[str, int] = {}
        self.notes: dict[str, str] = {}  # what --match-params changed, per variant
        for variant in variants:
            self._build(variant)
        if match_params:
            self._match_params()

    @property
    def baseline(self) -> str:
        return self.variants[0].name

    def _build(self, variant: Variant) -> None:
        merged = {**self.settings, **variant.settings}
        model_settings = {k: v for k, v in merged.items() if k in MODEL_KEYS}
        train_settings = {k: v for k, v in merged.items() if k in TRAIN_KEYS}
        where = f"variant '{variant.name}'"
        try:
            model = GPTConfig.from_preset(self.preset, **model_settings)
            train = TrainConfig(**train_settings, progress=False)
        except Gpt2regError as exc:  # an unknown component, a config a component rejects, a bad value
            raise ConfigError(f"{where}: {exc}") from None
        if model.vocab_size <= EOT_ID:
            raise ConfigError(f"{where}: vocab_size={model.vocab_size} is smaller than the GPT-2 tokenizer's "
                              f"{EOT_ID + 1} tokens")
        seq_len = train.seq_len or model.block_size
        if seq_len > model.block_size:
            raise ConfigError(f"{where}: seq_len={seq_len} exceeds its context (block_size={model.block_size})")
        try:
            params = count_parameters(model)
        except Exception as exc:  # a component that cannot be built for this config
            raise ConfigError(f"{where}: cannot be built: {type(exc).__name__}: {exc}") from exc
        self.models[variant.name], self.trains[variant.name], self.params[variant.name] = model, train, params

    def _match_params(self) -> None:
        """Resize the MLP hidden layer of gated variants so their parameter count matches a reference (parameters
        are linear in the hidden size): the first ungated variant that differs from it only in the activation,
        else the first ungated variant."""
        ungated = [v.name for v in self.variants if not _gated(self.models[v.name].act)]
        if not ungated:
            self.notes[self.baseline] = "--match-params: every variant is gated; nothing to match"
            return

        def sans_act(name: str) -> dict[str, Any]:
            return {k: v for k, v in self.models[name].to_dict().items() if k not in ("act", "mlp_ratio")}

        for variant in self.variants:
            config = self.models[variant.name]
            if not _gated(config.act):
                continue
            reference = next((n for n in ungated if sans_act(n) == sans_act(variant.name)), ungated[0])
            target = self.params[reference]
            if "mlp_ratio" in variant.settings:
                raise ConfigError(f"variant '{variant.name}' sets mlp_ratio and --match-params would change it; "
                                  "drop one of them")
            h0 = config.hidden_size
            p0, p1 = self.params[variant.name], count_parameters(config.replace(mlp_ratio=(h0 + 1) / config.n_embd))
            hidden = max(1, round(h0 + (target - p0) / (p1 - p0)))
            matched = config.replace(mlp_ratio=hidden / config.n_embd)
            assert matched.hidden_size == hidden
            params = count_parameters(matched)
            self.models[variant.name], self.params[variant.name] = matched, params
            self.notes[variant.name] = (
                f"--match-params: MLP hidden {h0} -> {hidden} (mlp_ratio {config.mlp_ratio:g} -> "
                f"{matched.mlp_ratio:.4g}), parameters {p0:,} -> {params:,} "
                f"({(params - target) / target:+.2%} vs {reference})")

    # -- runs ---------------------------------------------------------------------------------------
    def runs(self) -> list[Run]:
        """Every variant x seed, variant by variant."""
        out = []
        for variant in self.variants:
            for seed in self.seeds:
                name = f"{variant.name}-s{seed}"
                run_dir = self.out_dir / RUNS_DIR / name
                train = self.trains[variant.name].replace(seed=seed, out_dir=str(run_dir))
                out.append(Run(variant.name, seed, name, run_dir, self.models[variant.name], train))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The plan, saved as ``DIR/compare.json`` (``--report-only`` reads it back)."""
        return {
            "format": "gpt2reg-compare", "baseline": self.baseline, "preset": self.preset, "settings": self.settings,
            "seeds": self.seeds, "match_params": self.match_params,
            "variants": [{"name": v.name, "settings": v.settings, "model": self.models[v.name].to_dict(),
                          "params": self.params[v.name], "note": self.notes.get(v.name, "")} for v in self.variants],
            "runs": [{"name": r.name, "variant": r.variant, "seed": r.seed, "dir": f"{RUNS_DIR}/{r.name}"}
                     for r in self.runs()],
        }


def read_plan(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out_dir) / PLAN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def train_command(run: Run, *, nproc_per_node: int = 1, python: str | None = None, resume: bool = False) -> list[str]:
    """The ``gpt2reg train`` command that trains ``run`` (settings left at their defaults are not spelled out),
    or with ``resume`` the one that continues it.

    With ``python`` the command runs ``python -m gpt2reg`` (what the runner does) instead of the
    ``gpt2reg`` script; with ``nproc_per_node`` > 1 it runs under torchrun.
    """
    if nproc_per_node > 1:
        launcher = ["torchrun"] if python is None else [python, "-m", "torch.distributed.run"]
        cmd = launcher + ["--standalone", "--nproc_per_node", str(nproc_per_node), "-m", "gpt2reg"]
    else:
        cmd = ["gpt2reg"] if python is None else [python, "-m", "gpt2reg"]
    if resume:
        return cmd + ["train", "-o", str(run.dir), "--resume", "--no-progress"]
    cmd += ["train", "--data", str(run.train.data), "-o", str(run.dir)]
    default_model, model = GPTConfig().to_dict(), run.model.to_dict()
    for key in MODEL_KEYS:
        if model[key] != default_model[key]:
            cmd += [f"--{'' if model[key] else 'no-'}bias"] if key == "bias" else [_flag(key), _text(model[key])]
    default_train, train = TrainConfig().to_dict(), run.train.to_dict()
    for key in TRAIN_KEYS:
        if key == "data" or train[key] == default_train[key]:
            continue
        cmd += [_flag(key)] if key == "compile" else [_flag(key), _text(train[key])]
    return cmd + ["--no-progress"]


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def format_command(cmd: list[str]) -> str:
    return shlex.join(cmd)
