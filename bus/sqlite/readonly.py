"""Read-only SQL over a bus file: :func:`query`.

Three independent guards, so that no statement can change the file:

1. the file is opened with the SQLite URI ``mode=ro`` (the pager refuses writes), or
   ``immutable=1`` on read-only media where ``mode=ro`` cannot open it (:func:`read_only_uri`);
2. ``PRAGMA query_only = 1``;
3. an authorizer that allows only reading actions (SELECT, reads, functions, CTEs and a list
   of read-only pragmas without a value) and reports the first denied action in the
   :class:`~loopbus.bus.errors.ReadOnlyViolation` message.

A runaway query (a recursive CTE counting to 1e12) would hold its read snapshot, and so keep
the WAL from being checkpointed, for as long as it runs, and SQLite's C loop never returns to
Python to notice Ctrl-C. A progress handler, called every :data:`PROGRESS_STEPS` virtual
machine instructions, stops it when its ``interrupt`` flag is set or its deadline passed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loopbus.bus.errors import (
    BusError,
    BusNotFound,
    InvalidQuery,
    QueryInterrupted,
    QueryTimeout,
    ReadOnlyViolation,
    RefusedFunction,
    check_bus_path,
    not_utf8_message,
)
from loopbus.bus.sqlite import migrations

# SQLite VM instructions between two checks of the interrupt flag and deadline: a check is a
# Python call, which at this spacing costs nothing measurable (a 2e6-row recursive CTE takes
# 0.25 s either way) and still comes every millisecond or so.
PROGRESS_STEPS = 20_000


class Flag(Protocol):
    """What ``query(interrupt=...)`` needs: ``threading.Event`` fits."""

    def is_set(self) -> bool: ...


_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
# Pragmas that only read. Those in _PRAGMAS_WITH_ARG may take an argument (a table or index
# name, a row limit); for all others an argument means an assignment, i.e. a write.
_READ_PRAGMAS = {
    "application_id",
    "collation_list",
    "compile_options",
    "data_version",
    "database_list",
    "encoding",
    "foreign_key_check",
    "foreign_key_list",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "journal_mode",
    "module_list",
    "page_count",
    "page_size",
    "pragma_list",
    "quick_check",
    "schema_version",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
}
_PRAGMAS_WITH_ARG = {
    "foreign_key_check",
    "foreign_key_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "quick_check",
    "table_info",
    "table_list",
    "table_xinfo",
}
_ACTION_NAMES = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_").replace("_", " ")
    for name in (
        "SQLITE_ALTER_TABLE SQLITE_ANALYZE SQLITE_ATTACH SQLITE_CREATE_INDEX "
        "SQLITE_CREATE_TABLE SQLITE_CREATE_TEMP_INDEX SQLITE_CREATE_TEMP_TABLE "
        "SQLITE_CREATE_TEMP_TRIGGER SQLITE_CREATE_TEMP_VIEW SQLITE_CREATE_TRIGGER "
        "SQLITE_CREATE_VIEW SQLITE_CREATE_VTABLE SQLITE_DELETE SQLITE_DETACH SQLITE_DROP_INDEX "
        "SQLITE_DROP_TABLE SQLITE_DROP_TEMP_INDEX SQLITE_DROP_TEMP_TABLE SQLITE_DROP_TEMP_TRIGGER "
        "SQLITE_DROP_TEMP_VIEW SQLITE_DROP_TRIGGER SQLITE_DROP_VIEW SQLITE_DROP_VTABLE "
        "SQLITE_INSERT SQLITE_PRAGMA SQLITE_REINDEX SQLITE_SAVEPOINT SQLITE_TRANSACTION "
        "SQLITE_UPDATE"
    ).split()
    if hasattr(sqlite3, name)
}


# Functions refused even in a read-only query: fts3_tokenizer('simple') returns the address
# of a C structure (an ASLR leak) and with two arguments installs one; load_extension runs
# native code. SQLite reports the name in lower case.
_REFUSED_FUNCTIONS = {
    "fts3_tokenizer": "it returns a memory address and can install a native tokenizer",
    "load_extension": "it loads native code",
}

# Writes to sqlite_master & co. are how SQLite authorizes DDL.
_SCHEMA_WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}


def is_read_only(path: Path) -> bool:
    """Whether this process cannot write the existing bus file ``path``: the file is not
    writable, or its ``-wal`` / ``-shm`` are missing and cannot be created in its directory.

    ``os.access`` reports a read-only file system (EROFS) and an immutable file even for root,
    and for other users the permission bits, i.e. what SQLite's writes would meet.
    """
    if not os.access(path, os.W_OK):
        return True
    side_files = [Path(f"{path}-wal"), Path(f"{path}-shm")]
    if all(p.exists() for p in side_files):
        return not all(os.access(p, os.W_OK) for p in side_files)
    return not os.access(path.parent, os.W_OK | os.X_OK)


def read_only_uri(path: Path) -> str:
    """The SQLite URI that reads ``path`` and never writes it: ``mode=ro``, or, where that
    cannot open it, ``immutable=1``.

    A WAL file opened ``mode=ro`` needs its ``-shm``; on read-only media without one
    (a bus closed cleanly leaves none) SQLite cannot open it. With no ``-wal`` either, every
    committed event is in the main file and nothing on that medium can change it, so SQLite
    may read it as immutable. A non-empty ``-wal`` holds commits that immutable mode would
    skip: then the ``mode=ro`` error stands (BusError). Immutable means SQLite never looks for
    changes: a writer that starts later (through another, writable path to the same file) is
    not seen by a connection opened this way, e.g. by a ``tail --follow`` already running.
    """
    base = path.resolve().as_uri()
    uri = base + "?mode=ro"
    probe = sqlite3.connect(uri, uri=True)
    try:
        probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return uri
    except sqlite3.DatabaseError as exc:
        # A read-only file system says CANTOPEN; a folder without write permission says
        # READONLY_DIRECTORY (and an -shm that cannot be set up READONLY_CANTINIT).
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code not in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
            return uri  # not a database, or a foreign one: read_version says which
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise BusError(
                f"cannot read the bus {path}: it is on read-only media with a write-ahead log "
                f"({wal.name}) but no {path.name}-shm, which SQLite needs and cannot create "
                "there; copy the bus and its -wal file to writable storage"
            ) from None
    finally:
        probe.close()
    return base + "?immutable=1"


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows (tuples) of a read-only query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.DOTALL)


def _first_keyword(sql: str) -> str:
    """The statement's first keyword, upper-case, after blanks and comments."""
    rest = sql[_LEADING_NOISE.match(sql).end() :]  # type: ignore[union-attr]
    match = re.match(r"[A-Za-z]+", rest)
    return match.group(0).upper() if match else ""


def _describe(action: int, arg1: str | None, arg2: str | None, sql: str = "") -> str:
    if action == sqlite3.SQLITE_ATTACH and _first_keyword(sql) == "VACUUM":
        # SQLite authorizes VACUUM (and VACUUM INTO) as an ATTACH of its temporary copy.
        return "VACUUM"
    name = _ACTION_NAMES.get(action, f"action {action}")
    if action == sqlite3.SQLITE_PRAGMA:
        return f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else "")
    if arg1 and arg1.startswith("sqlite_") and action in _SCHEMA_WRITES:
        return "a schema change (CREATE/DROP/ALTER)"
    target = f" {arg1}" if arg1 else ""
    return f"{name}{target}"


def query(
    path: str | os.PathLike[str] | None,
    sql: str,
    params: Sequence[Any] | dict[str, Any] = (),
    *,
    timeout_s: float | None = None,
    interrupt: Flag | None = None,
) -> QueryResult:
    """Run one SQL statement on the bus file read-only and return all its rows.

    ``timeout_s``: stop the query after that many seconds (None: no limit) with QueryTimeout.
    ``interrupt``: a flag (e.g. a ``threading.Event`` that a SIGINT handler sets) checked
    while the query runs; once set, the query stops with QueryInterrupted. Without one, a
    KeyboardInterrupt (Ctrl-C in the main thread) stops the query and is re-raised.

    Raises BusNotFound (no such file), ReadOnlyViolation (the statement would write:
    INSERT/UPDATE/DELETE, CREATE/DROP/ALTER, ATTACH, VACUUM, PRAGMA assignments,
    transactions), InvalidQuery (syntax error, unknown table, several statements),
    SchemaTooNew / NotABus.
    """
    if timeout_s is not None and not timeout_s > 0:
        raise BusError(f"timeout must be a positive number of seconds, not {timeout_s!r}")
    if path is None:
        from loopbus.bus.sqlite.core import default_bus_path

        path = default_bus_path()
    from loopbus.bus.store import backend_of, sqlite_path

    if backend_of(path) != "sqlite":
        # runs/show/report/serve read run queries written for SQLite files (loopbus.bus.runs_queries).
        raise BusError(
            f"{path!r} is not a SQLite bus file: this command reads SQLite buses only; on "
            "PostgreSQL, query the runs, tool_calls and errors views with `loopbus sql`"
        )
    file = Path(sqlite_path(path)).expanduser()
    check_bus_path(file)  # a FIFO would block the read-only open below forever
    if not file.exists():
        raise BusNotFound(f"no bus file at {file}; pass an existing bus with --bus / $LOOPBUS_BUS")
    try:
        conn = sqlite3.connect(read_only_uri(file), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise BusError(f"cannot open {file} read-only: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        migrations.read_version(conn, str(file))
        conn.execute("PRAGMA query_only = 1")
        denied: list[str] = []
        refused: list[str] = []

        def authorize(
            action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
        ) -> int:
            if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _REFUSED_FUNCTIONS:
                refused.append((arg2 or "").lower())
                return sqlite3.SQLITE_DENY
            if action in _ALLOWED:
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
                name = arg1.lower()
                if name in _READ_PRAGMAS and (arg2 is None or name in _PRAGMAS_WITH_ARG):
                    return sqlite3.SQLITE_OK
            denied.append(_describe(action, arg1, arg2, sql))
            return sqlite3.SQLITE_DENY

        conn.set_authorizer(authorize)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        stopped: list[BusError] = []

        def progress() -> int:
            # Any exception raised in here (a KeyboardInterrupt delivered by the signal
            # handler) makes SQLite stop too; sqlite3 swallows it, see below.
            if interrupt is not None and interrupt.is_set():
                stopped.append(QueryInterrupted("query interrupted"))
                return 1
            if deadline is not None and time.monotonic() > deadline:
                stopped.append(QueryTimeout(f"query timed out after {timeout_s:g} s"))
                return 1
            return 0

        conn.set_progress_handler(progress, PROGRESS_STEPS)
        try:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
        except UnicodeEncodeError as exc:  # undecodable bytes from the command line
            raise InvalidQuery(not_utf8_message(exc)) from None
        except sqlite3.Warning as exc:  # "You can only execute one statement at a time."
            raise InvalidQuery(f"{exc} Run one SQL statement per query.") from None
        except sqlite3.ProgrammingError as exc:
            raise InvalidQuery(f"invalid query: {exc}") from None
        except sqlite3.DatabaseError as exc:
            message = str(exc)
            if message == "interrupted" and isinstance(exc, sqlite3.OperationalError):
                if stopped:
                    raise stopped[0] from None
                # The progress handler raised: sqlite3 drops the exception and SQLite stops.
                # Only a signal handler raises there, i.e. Ctrl-C: give the caller its
                # interrupt.
                raise KeyboardInterrupt from None
            if refused:
                name = refused[0]
                raise RefusedFunction(
                    f"refused: {name}() is not allowed in loopbus sql ({_REFUSED_FUNCTIONS[name]})"
                ) from None
            if denied or "readonly" in message or "read-only" in message:
                what = denied[0] if denied else "writing"
                raise ReadOnlyViolation(
                    f"refused: {what} would change the bus, and this query is read-only "
                    "(only SELECT and read-only PRAGMAs are allowed); use the loopbus "
                    "publish/prune commands to change the bus"
                ) from None
            raise InvalidQuery(f"invalid query: {message}") from None
        columns = [d[0] for d in cursor.description] if cursor.description else []
        return QueryResult(columns=columns, rows=rows)
    finally:
        conn.close()


__all__ = ["QueryResult", "is_read_only", "query", "read_only_uri"]
