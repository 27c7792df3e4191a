"""``gpt2reg plugins``: every plugin found, what it provides, and why it failed if it did."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List plugins: distribution and version, hooks implemented, components registered, failures.

    Reads entry points and registrations only; no component is imported. GPT2REG_LOAD_PLUGINS
    (comma-separated allow-list) and GPT2REG_STRICT_PLUGINS=1 apply as for every command.
    """
    from ..plugins import list_plugins

    infos = list_plugins()
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    for info in infos:
        origin = "built-in" if info.builtin else info.source
        dist = f"{info.distribution or '-'} {info.version or ''}".strip()
        status = info.status.upper() if info.status != "loaded" else info.status
        click.echo(f"{info.name}  ({dist}, {origin})  {status}")
        if info.error:
            click.echo(f"  error: {info.error}")
        if info.status == "disabled":
            click.echo("  not in GPT2REG_LOAD_PLUGINS")
        if info.hooks:
            click.echo(f"  hooks: {', '.join(info.hooks)}")
        if info.components:
            click.echo(f"  components: {', '.join(info.components)}")
        if info.overridden:
            click.echo(f"  overridden: {', '.join(info.overridden)}")
