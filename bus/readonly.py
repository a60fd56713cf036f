"""Read-only SQL over a bus file: :func:`query`.

Three independent guards, so that no statement can change the file:

1. the file is opened with the SQLite URI ``mode=ro`` (the pager refuses writes);
2. ``PRAGMA query_only = 1``;
3. an authorizer that allows only reading actions (SELECT, reads, functions, CTEs and a list
   of read-only pragmas without a value) and reports the first denied action in the
   :class:`~bus.errors.ReadOnlyViolation` message.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import migrations
from bus.errors import BusError, BusNotFound, InvalidQuery, ReadOnlyViolation

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


# Writes to sqlite_master & co. are how SQLite authorizes DDL.
_SCHEMA_WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows (tuples) of a read-only query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def _describe(action: int, arg1: str | None, arg2: str | None) -> str:
    name = _ACTION_NAMES.get(action, f"action {action}")
    if action == sqlite3.SQLITE_PRAGMA:
        return f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else "")
    if arg1 and arg1.startswith("sqlite_") and action in _SCHEMA_WRITES:
        return "a schema change (CREATE/DROP/ALTER)"
    target = f" {arg1}" if arg1 else ""
    return f"{name}{target}"


def query(
    path: str | os.PathLike[str] | None, sql: str, params: Sequence[Any] | dict[str, Any] = ()
) -> QueryResult:
    """Run one SQL statement on the bus file read-only and return all its rows.

    Raises BusNotFound (no such file), ReadOnlyViolation (the statement would write:
    INSERT/UPDATE/DELETE, CREATE/DROP/ALTER, ATTACH, PRAGMA assignments, transactions),
    InvalidQuery (syntax error, unknown table, several statements), SchemaTooNew / NotABus.
    """
    if path is None:
        from bus.core import default_bus_path

        path = default_bus_path()
    file = Path(path).expanduser()
    if not file.is_file():
        raise BusNotFound(f"no bus file at {file}; pass an existing bus with --bus / $LOOPBUS_BUS")
    try:
        conn = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise BusError(f"cannot open {file} read-only: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        migrations.read_version(conn, str(file))
        conn.execute("PRAGMA query_only = 1")
        denied: list[str] = []

        def authorize(
            action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
        ) -> int:
            if action in _ALLOWED:
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
                name = arg1.lower()
                if name in _READ_PRAGMAS and (arg2 is None or name in _PRAGMAS_WITH_ARG):
                    return sqlite3.SQLITE_OK
            denied.append(_describe(action, arg1, arg2))
            return sqlite3.SQLITE_DENY

        conn.set_authorizer(authorize)
        try:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
        except sqlite3.Warning as exc:  # "You can only execute one statement at a time."
            raise InvalidQuery(f"{exc} Run one SQL statement per query.") from None
        except sqlite3.ProgrammingError as exc:
            raise InvalidQuery(f"invalid query: {exc}") from None
        except sqlite3.DatabaseError as exc:
            message = str(exc)
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


__all__ = ["QueryResult", "query"]
