"""Shared CLI plumbing: bus path resolution, exit codes and mapping library errors to `Error: ...`.

Exit codes, the same for every command (the README has the table):

* 0 (:data:`EXIT_OK`): success;
* 1 (:data:`EXIT_FAILED`): the command ran but did not succeed (a run ended other than
  `done`, a replay diverged, a sandbox snippet raised, a chain gave up or was not idle in time);
* 2 (:data:`EXIT_USAGE`): a usage or setup error (bad option or input, unknown agent, missing
  model or bus file, bad config), printed as `Error: ...`; nothing ran;
* 130 (:data:`EXIT_INTERRUPTED`): stopped by Ctrl-C.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from loopbus.agents.termsafe import printable

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def exit_codes_epilog(
    failed: str = "the command ran but did not succeed", ok: str = "success"
) -> str:
    """The `--help` epilog documenting a command's exit codes; ``failed`` says what 1 means."""
    # \b keeps click from re-wrapping the lines into one paragraph.
    return (
        "\b\nExit status:\n"
        f"  0    {ok}\n"
        f"  1    {failed}\n"
        "  2    usage or setup error (bad option or input, missing file, model or config)\n"
        "  130  interrupted (Ctrl-C)"
    )


# Lightweight modules defining each package's user-facing error base class.
_ERROR_BASES = (
    ("loopbus.bus.errors", "BusError"),
    ("loopbus.models.errors", "ModelError"),
    ("loopbus.agents.errors", "AgentError"),
)

# Library errors that mean "it ran and did not succeed" or "interrupted", not a user mistake.
_ERROR_EXIT_CODES = (
    ("loopbus.bus.errors", "QueryInterrupted", EXIT_INTERRUPTED),
    ("loopbus.bus.errors", "QueryTimeout", EXIT_FAILED),
    ("loopbus.agents.chains.supervisor", "ChainGaveUp", EXIT_FAILED),
)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes that mean 'the user did something wrong', not a bug."""
    types: list[type[BaseException]] = []
    for module_name, attr in _ERROR_BASES:
        try:
            types.append(getattr(importlib.import_module(module_name), attr))
        except (ModuleNotFoundError, AttributeError):
            continue
    return tuple(types)


def exit_code_for(exc: BaseException) -> int:
    """The exit code for a library error: :data:`EXIT_USAGE` unless it is listed otherwise."""
    for module_name, attr, code in _ERROR_EXIT_CODES:
        # Only a loaded module can have raised it: never import one just to compare.
        cls = getattr(sys.modules.get(module_name), attr, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return code
    return EXIT_USAGE


def bus_path(ctx: click.Context) -> str:
    """The bus chosen by --bus, else $LOOPBUS_BUS, else ./loopbus.db: a file path or a URL
    (``sqlite:///PATH``, ``postgresql://...``; :func:`bus.open` picks the backend)."""
    explicit = (ctx.find_root().obj or {}).get("bus_path")
    return explicit or os.environ.get("LOOPBUS_BUS") or "loopbus.db"


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which slip through its
    comparisons: ``--timeout nan`` would otherwise mean "never")."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


#: A finite duration in seconds, above 0 (for --timeout and similar options).
SECONDS = FiniteFloat(min=0, min_open=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print `Error: message` to stderr and exit with ``code`` (2, a usage/setup error)."""
    # Messages may quote files, configs or recordings: terminal escapes are shown, not run.
    click.echo(f"Error: {printable(message, keep_newlines=True)}", err=True)
    raise SystemExit(code)


def handle_errors(fn: F) -> F:
    """Turn library errors into `Error: ...` (exit 2, or the code listed for the error type)
    instead of a traceback, and Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except user_error_types() as exc:
            fail(str(exc), exit_code_for(exc))
        except KeyboardInterrupt:
            raise SystemExit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]
