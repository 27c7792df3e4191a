"""``gpt2reg components``: what the loaded plugins provide."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def components(as_json: bool) -> None:
    """List every registered component per kind, with the plugin that provides it."""
    from ..plugins import get_registry
    from ..registry import KINDS

    registry = get_registry()
    if as_json:
        out = {kind: [c.to_dict() for c in registry.components(kind)] for kind in KINDS}
        click.echo(json.dumps(out, indent=2))
        return
    for kind, (_hook, label) in KINDS.items():
        click.echo(f"{label}s (--{kind}):")
        for c in registry.components(kind):
            click.echo(f"  {c.name:<12} {c.description}  [{c.plugin}]")
