"""What a comparison compares: variants, seeds and the settings every run shares; its run folders and commands.

Variants come from axes that expand to a grid (``{"pos": ["learned", "rope"], "act": [...]}``), from
explicit settings (``"pos=rope,act=swiglu,lr=3e-3"``, any model or training setting ``gpt2reg train``
takes), or from a TOML file. Everything a variant does not set is shared, and what decides the data
and the budget (``SHARED_ONLY``) cannot differ between variants: every run of a seed sees the same
batches, the same validation windows and the same number of tokens.

Each variant x seed is an ordinary ``gpt2reg train`` run in ``DIR/runs/<variant>-s<seed>``, and
``train_command`` is exactly the command that trains it.

One schema checks what a comparison is given, wherever it comes from (options, a TOML file, the API, the
``compare.json`` that ``--report-only`` reads back), before anything runs, with the CLI's rules: seeds are
a count >= 1 or distinct seeds in ``SEED_RANGE`` (a seed given twice would count one run twice), a bool is
a real true/false (not 1, not "no"), axes are lists of distinct component names, variants are tables.
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
SEED_RANGE = (0, 2**63 - 1)  # as the CLI's --seed: torch.manual_seed and numpy take it
MAX_SEEDS = 10_000  # runs per variant: a count above this is a typo, not a plan
TOML_KEYS = ("seeds", "baseline", "match_params", "settings", "axes", "variant")
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
    if not isinstance(value, (str, int, float)):  # a TOML list, table or date
        raise ConfigError(f"{key}={value!r}{context}: expected {'true/false' if base == 'bool' else base}, "
                          f"not {_type_name(value)}")
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
    except (ValueError, OverflowError):
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


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "text", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def check_seeds(seeds: Any, where: str = "seeds") -> int | list[int]:
    """A count of seeds (>= 1) or a list of distinct seeds, as ``--seeds`` and ``--seed`` take them."""
    low, high = SEED_RANGE
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_SEEDS:
            raise ConfigError(f"{where}={seeds}: a count of seeds must be in [1, {MAX_SEEDS}] (or give a list of seeds)")
        return seeds
    if not isinstance(seeds, list):
        raise ConfigError(f"{where}={seeds!r}: give a count (seeds = 3) or a list of seeds (seeds = [0, 1, 2]), "
                          f"not {_type_name(seeds)}")
    if not seeds:
        raise ConfigError(f"{where}=[]: need at least one seed")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"{where}: {len(seeds)} seeds; at most {MAX_SEEDS}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= high:
            raise ConfigError(f"{where}: seed {seed!r} is not an integer in [{low}, {high}]")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"{where}: seed(s) {', '.join(map(str, twice))} given twice; each seed is one run, "
                          "and a run counted twice fakes a spread of zero")
    return list(seeds)


def check_bool(value: Any, where: str) -> bool:
    """A real true/false: TOML's ``"no"`` or ``1`` is a mistake, not a truth value."""
    if not isinstance(value, bool):
        raise ConfigError(f"{where}={value!r}: must be true or false, not {_type_name(value)}")
    return value


def check_axes(axes: Any, where: str) -> dict[str, list[str]]:
    """``{kind: [component, ...]}`` with known kinds and distinct, non-empty component names."""
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}: must be a table of lists, e.g. pos = [\"learned\", \"rope\"], "
                          f"not {_type_name(axes)}")
    out = {}
    for kind, values in axes.items():
        if kind not in AXES:
            raise ConfigError(f"{where}: unknown axis '{kind}'; axes: {', '.join(AXES)} (other settings: use "
                              "variants)")
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise ConfigError(f"{where}.{kind}: must be a non-empty list of component names, e.g. "
                              f"[\"learned\", \"rope\"], not {values!r}")
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{where}.{kind}: {', '.join(twice)} given twice")
        out[kind] = [v.strip() for v in values]
    return out


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
    axes = check_axes(axes, "axes")
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
    unknown = sorted(set(data) - set(TOML_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; "
                          "keys: seeds, baseline, match_params, [settings], [axes], [[variant]]")
    out: dict[str, Any] = {"seeds": None, "baseline": None, "match_params": None}
    if "seeds" in data:
        out["seeds"] = check_seeds(data["seeds"], f"{path}: seeds")
    if "baseline" in data:
        if not isinstance(data["baseline"], str) or not data["baseline"]:
            raise ConfigError(f"{path}: baseline={data['baseline']!r}: must be a variant's name")
        out["baseline"] = data["baseline"]
    if "match_params" in data:
        out["match_params"] = check_bool(data["match_params"], f"{path}: match_params")
    out["axes"] = check_axes(data.get("axes", {}), f"{path}: [axes]")
    tables = data.get("variant", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: variant must be tables ([[variant]] with name = ... and settings), "
                          f"not {_type_name(tables)}")
    variants = []
    for i, table in enumerate(tables):
        table = dict(table)
        name = table.pop("name", None)
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{path}: variant {i + 1}: name={name!r} must be text")
        settings = check_settings(table, f"{path} variant {name or i + 1}")
        if not settings:
            raise ConfigError(f"{path}: variant {name or i + 1} sets nothing besides its name")
        variants.append(Variant(name or _auto_name(settings), settings))
    shared = data.get("settings", {})
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: settings must be a table ([settings]), not {_type_name(shared)}")
    out["settings"] = check_settings(shared, f"{path} [settings]", shared=True)
    out["variants"] = variants
    return out


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
        seeds = check_seeds(seeds)
        if isinstance(seeds, int):
            first = settings.get("seed", 0)
            if first + seeds - 1 > SEED_RANGE[1]:
                raise ConfigError(f"seeds: {seeds} seeds from seed {first} pass the largest seed, {SEED_RANGE[1]}")
            seeds = list(range(first, first + seeds))
        self.seeds = seeds
        check_bool(match_params, "match_params")
        if baseline is not None and baseline not in names:
            raise ConfigError(f"baseline '{baseline}' is not a variant; variants: {', '.join(names)}")
        if baseline is not None:  # the baseline goes first
            variants = sorted(variants, key=lambda v: v.name != baseline)
        from ..files import check_folder

        # A comparison folder is reused (to resume); only where it goes is checked: read-only, a file, a name.
        self.out_dir = check_folder(out_dir, what="the comparison", reusable=lambda _: True)
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
    """The plan ``compare`` saved in ``out_dir`` (None if there is none), checked by ``check_plan``."""
    path = Path(out_dir) / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return check_plan(plan, path)


def _plan_error(path: Any, what: str) -> InputError:
    return InputError(f"{path}: {what}; not a plan gpt2reg compare wrote (edited?): fix it, or remove it and "
                      f"the report is rebuilt from the {RUNS_DIR}/<variant>-s<seed> folders")


def _is_int(value: Any, low: int = 0, high: int = 2**63 - 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_plan(plan: Any, path: Any = PLAN_FILE) -> dict[str, Any]:
    """A ``compare.json`` (``Comparison.to_dict``) whose every field the report reads has its type: variants
    with distinct names, runs of known variants in their own ``runs/`` folders, each variant x seed once."""
    if not isinstance(plan, dict) or plan.get("format") != "gpt2reg-compare":
        raise _plan_error(path, "no \"format\": \"gpt2reg-compare\"")
    variants, runs = plan.get("variants"), plan.get("runs")
    if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
        raise _plan_error(path, "\"variants\" is not a non-empty list of objects")
    names = []
    for v in variants:
        name = v.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in names:
            raise _plan_error(path, f"variant name {name!r} is not a distinct folder-safe name")
        if not isinstance(v.get("settings", {}), dict) or not isinstance(v.get("model"), dict):
            raise _plan_error(path, f"variant '{name}': \"settings\" and \"model\" must be objects")
        if v.get("params") is not None and not _is_int(v["params"]):
            raise _plan_error(path, f"variant '{name}': \"params\"={v['params']!r} is not a count")
        if not isinstance(v.get("note", ""), str):
            raise _plan_error(path, f"variant '{name}': \"note\" is not text")
        names.append(name)
    if plan.get("baseline") not in names:
        raise _plan_error(path, f"baseline {plan.get('baseline')!r} is not one of its variants")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise _plan_error(path, "\"runs\" is not a list of objects")
    seen: set[tuple[str, int]] = set()
    for r in runs:
        name, variant, seed, folder = r.get("name"), r.get("variant"), r.get("seed"), r.get("dir")
        if variant not in names or not _is_int(seed, *SEED_RANGE) or not isinstance(name, str):
            raise _plan_error(path, f"run {name!r}: variant {variant!r} or seed {seed!r} is not valid")
        if folder != f"{RUNS_DIR}/{name}" or not _NAME_RE.match(name):
            raise _plan_error(path, f"run {name!r}: its folder must be {RUNS_DIR}/<name>, not {folder!r}")
        if (variant, seed) in seen:
            raise _plan_error(path, f"variant '{variant}' seed {seed} is listed twice (one run counted twice)")
        seen.add((variant, seed))
    if "seeds" in plan:
        seeds = plan["seeds"]
        if not isinstance(seeds, list) or not all(_is_int(s, *SEED_RANGE) for s in seeds) or len(set(seeds)) != len(seeds):
            raise _plan_error(path, f"\"seeds\"={seeds!r} is not a list of distinct seeds")
    if not isinstance(plan.get("settings", {}), dict):
        raise _plan_error(path, "\"settings\" is not an object")
    if plan.get("jobs") is not None and not _is_int(plan["jobs"], 1):
        raise _plan_error(path, f"\"jobs\"={plan['jobs']!r} is not a count")
    return plan


def check_run(run: Any, path: Any) -> dict[str, Any]:
    """A run folder's ``run.json`` as far as the report reads it: its model and its step budget."""
    train = run.get("train") if isinstance(run, dict) else None
    if not isinstance(train, dict) or not _is_int(train.get("max_steps"), 1) or not isinstance(run.get("model"), dict):
        raise InputError(f"{path}: not the run.json of a gpt2reg train run (no model, or no train.max_steps >= 1; "
                         "edited?): fix or remove that run folder")
    return run


_NUMBERS = ("loss", "val_loss", "tokens_per_s", "lr", "grad_norm", "elapsed_s")


def check_records(records: list[Any], path: Any) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl`` records with the types the report computes with (a count for step and
    tokens, a number or null for the losses and speeds; NaN and infinities are numbers here - a run with one
    counts as diverged, see ``report.run_state``)."""
    for i, record in enumerate(records, start=1):
        bad = not isinstance(record, dict) or not _is_int(record.get("step")) or not _is_int(record.get("tokens"))
        bad = bad or any(record.get(k) is not None and (isinstance(record[k], bool) or not isinstance(record[k], (int, float)))
                         for k in _NUMBERS)
        if bad:
            raise InputError(f"{path}: record {i} is not a gpt2reg metrics record (step and tokens counts, losses "
                             "numbers or null; edited?): fix or remove that run folder")
    return records


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
