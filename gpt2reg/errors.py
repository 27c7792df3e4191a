"""Errors a user can act on: the CLI prints their message as one line, never a traceback."""


class Gpt2regError(Exception):
    """Base class for every error caused by input the user can correct."""


class ConfigError(Gpt2regError, ValueError):
    """An impossible or inconsistent model configuration."""


class UnknownComponentError(Gpt2regError, KeyError):
    """A component name that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CheckpointError(Gpt2regError):
    """A checkpoint that cannot be read, or does not fit its config."""


class PluginError(Gpt2regError):
    """A plugin that failed to import or to register its components."""


class InputError(Gpt2regError, ValueError):
    """Input a command or function cannot use as given (too long, empty, out of range)."""


class OutputError(Gpt2regError):
    """A file or folder that cannot be written where the user asked (read-only, full, name too long, taken)."""


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first non-blank line of ``exc``'s message: a summary for a one-line error (the rest of a
    library's message is often a traceback or a dump); its type's name when it has no message.
    ``with_type`` starts it with the type's name (``ValueError: ...``), for reports that keep going."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
