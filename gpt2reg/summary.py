"""A readable and a machine-readable description of a model (what ``build`` and ``info`` print)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _human(n: float, units: tuple[str, ...], step: float) -> str:
    for unit in units[:-1]:
        if abs(n) < step:
            return f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= step
    return f"{n:.1f} {units[-1]}"


def summarize(model: Any, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Components (with their plugins), sizes, parameter count and, for a saved model, bytes on disk."""
    from .plugins import get_registry

    config = model.config
    registry = get_registry()
    components = {}
    for kind in ("pos", "act", "norm"):
        comp = registry.get(kind, getattr(config, kind))
        components[kind] = {"name": comp.name, "plugin": comp.plugin, "description": comp.description}
    param = next(model.parameters())
    out: dict[str, Any] = {
        "config": config.to_dict(),
        "components": components,
        "parameters": model.num_parameters(),
        "dtype": str(param.dtype).removeprefix("torch."),
    }
    if directory is not None:
        path = Path(directory)
        files = [p for p in path.rglob("*") if p.is_file()]
        out["directory"] = str(path)
        out["bytes_on_disk"] = sum(p.stat().st_size for p in files)
    return out


def format_summary(summary: dict[str, Any]) -> str:
    c = summary["config"]
    comps = summary["components"]
    lines = [
        f"GPT-2 variant: {c['n_layer']} layers, {c['n_head']} heads, n_embd {c['n_embd']}, "
        f"context {c['block_size']}, vocab {c['vocab_size']}",
        f"  positional : {comps['pos']['name']} ({comps['pos']['plugin']})",
        f"  activation : {comps['act']['name']} ({comps['act']['plugin']}), MLP ratio {c['mlp_ratio']:g}",
        f"  norm       : {comps['norm']['name']} ({comps['norm']['plugin']}), eps {c['norm_eps']:g}",
        f"  bias {'on' if c['bias'] else 'off'}, dropout {c['dropout']:g}, "
        f"tied embeddings {'yes' if c['tie_embeddings'] else 'no'}, dtype {summary['dtype']}",
        f"  parameters : {summary['parameters']:,} ({_human(summary['parameters'], ('', 'K', 'M', 'B'), 1000)})",
    ]
    if "bytes_on_disk" in summary:
        size = _human(summary["bytes_on_disk"], ("B", "KiB", "MiB", "GiB"), 1024)
        lines.append(f"  on disk    : {size} in {summary['directory']}")
    return "\n".join(lines)
