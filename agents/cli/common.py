"""Shared CLI plumbing: bus path resolution and mapping library errors to `Error: ...`."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# Lightweight modules defining each package's user-facing error base class.
_ERROR_BASES = (
    ("bus.errors", "BusError"),
    ("models.errors", "ModelError"),
    ("agents.errors", "AgentError"),
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


def bus_path(ctx: click.Context) -> str:
    """The bus file chosen by --bus, else $LOOPBUS_BUS, else ./loopbus.db."""
    explicit = (ctx.find_root().obj or {}).get("bus_path")
    return explicit or os.environ.get("LOOPBUS_BUS") or "loopbus.db"


def fail(message: str) -> None:
    """Print `Error: message` to stderr and exit 1."""
    click.echo(f"Error: {message}", err=True)
    raise SystemExit(1)


def handle_errors(fn: F) -> F:
    """Turn library errors into `Error: ...` with exit code 1 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except user_error_types() as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
