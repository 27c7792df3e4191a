"""The ``gpt2reg`` command line: a thin shell over the Python API.

Each command lives in a submodule that imports only click at module level, so ``gpt2reg --help``
never imports torch. Errors a user can correct print as one line and exit 1, never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import sys

import click

from ..errors import Gpt2regError

# command name -> "module:function" inside gpt2reg.cli; loaded only when needed.
COMMANDS: dict[str, str] = {
    "components": "registry_cmds:components",
    "plugins": "plugin_cmds:plugins",
    "build": "model_cmds:build",
    "info": "model_cmds:info",
    "generate": "generate_cmds:generate",
    "bench": "bench_cmds:bench",
    "train": "train_cmds:train",
    "compare": "compare_cmds:compare",
    "eval": "train_cmds:eval_",
    "export": "onnx_cmds:export",
    "validate": "onnx_cmds:validate",
    "serve": "serve_cmds:serve",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(f"{__name__}.{module_name}"), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Gpt2regError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's own main, except that every error prints as one line: ``Error: what; what to do``.

        (Click's usage errors would print the usage and a hint on three more lines.)
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line_error(exc)}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        except OSError as exc:
            if exc.errno != errno.EPIPE:  # a closed pipe (`gpt2reg ... | head`) is not an error
                raise
            sys.stderr.close()
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def _one_line_error(exc: click.ClickException) -> str:
    message = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message = f"{message.rstrip('.')} (see '{ctx.command_path} --help')"
    return message


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpt2reg")
def cli() -> None:
    """GPT-2 assembled from a registry of pluggable components.

    \b
    gpt2reg components            what the installed plugins provide
    gpt2reg build --pos rope -o DIR   assemble a GPT-2 variant and save it
    """


def main() -> None:
    cli(prog_name="gpt2reg")
