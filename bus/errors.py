"""Error hierarchy of the ``bus`` package.

The CLI maps :class:`BusError` (and subclasses) to ``Error: <message>`` and exit code 1, so
every message says what is wrong and how to fix it.

These classes deliberately do not subclass ``ValueError``: pydantic would wrap a
``ValueError`` raised inside a validator into a ``ValidationError``, and callers should get
the typed error itself (``NewEvent(event_type="Bad")`` raises :class:`InvalidEventType`).
"""

from __future__ import annotations

import os
import stat


class BusError(Exception):
    """Base class of every error raised by the ``bus`` package."""


class InvalidEvent(BusError):
    """An event cannot be published as given (base of the three errors below, and raised
    itself for a bad ``agent``, ``run_id`` or ``caused_by``)."""


class InvalidEventType(InvalidEvent):
    """An event type does not follow the naming rule (see ``loopbus.bus.events.EVENT_TYPE_RULE``)."""


class PayloadTooLarge(InvalidEvent):
    """An event payload's compact JSON encoding exceeds the bus's ``max_payload_bytes``."""


class InvalidPayload(InvalidEvent):
    """An event payload cannot be stored as JSON (e.g. a set, bytes, NaN or an object)."""


class BusNotFound(BusError):
    """The bus file does not exist (and the caller asked not to create it)."""


class SchemaTooNew(BusError):
    """The bus file was written by a newer loopbus (its schema version is unknown here)."""


class ReadOnlyViolation(BusError):
    """A read-only query tried to write (INSERT/UPDATE/DELETE/DDL/ATTACH/PRAGMA writes)."""


class InvalidQuery(BusError):
    """A read-only query is not valid SQL (syntax error, unknown table, several statements)."""


class RefusedFunction(InvalidQuery):
    """A read-only query calls an SQL function that ``loopbus sql`` refuses (one that leaks a
    memory address or loads native code, such as ``fts3_tokenizer`` or ``load_extension``)."""


class BusReadOnly(BusError):
    """A write to a bus that can only be read (read-only media, a file or directory without
    write permission); reading commands still work on it."""


class QueryInterrupted(BusError):
    """A read-only query was stopped by its interrupt flag (Ctrl-C in ``loopbus sql``)."""


class QueryTimeout(BusError):
    """A read-only query ran longer than its ``timeout_s``."""


class NotABus(BusError):
    """The file exists but is not a loopbus bus (another SQLite database or not SQLite at all)."""


class BusClosed(BusError):
    """The bus was used after ``close()``."""


__all__ = [
    "BusClosed",
    "BusError",
    "BusNotFound",
    "BusReadOnly",
    "InvalidEvent",
    "InvalidEventType",
    "InvalidPayload",
    "InvalidQuery",
    "NotABus",
    "PayloadTooLarge",
    "PruneWarning",
    "QueryInterrupted",
    "QueryTimeout",
    "ReadOnlyViolation",
    "RefusedFunction",
    "SchemaTooNew",
    "check_bus_path",
    "not_utf8_message",
]


def check_bus_path(path: str | os.PathLike[str]) -> None:
    """BusError unless ``path`` is a regular file (or a symlink to one) or does not exist.

    SQLite must never open anything else: a named pipe blocks a read-only open until some
    writer appears, and a device or socket is no database.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BusError(f"cannot access the bus {path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        kind = "a directory"
    elif stat.S_ISFIFO(mode):
        kind = "a named pipe (FIFO), not a file"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device, not a file"
    elif stat.S_ISSOCK(mode):
        kind = "a socket, not a file"
    else:
        kind = "not a regular file"
    raise BusError(f"{path} is {kind}; pass the path of a bus file")


def not_utf8_message(exc: UnicodeEncodeError) -> str:
    """The message for text SQLite cannot take: undecodable bytes from the command line,
    which Python keeps as lone surrogates (``'\\udcff'``)."""
    text = str(exc.object)
    shown = text if len(text) <= 80 else text[:77] + "..."
    return f"{shown!r} is not valid UTF-8 text (it holds {text[exc.start : exc.end]!r})"


class PruneWarning(UserWarning):
    """Emitted (via :mod:`warnings` and logging) when ``prune(max_age_s=...)`` deletes events
    that a registered consumer has not acknowledged yet."""
