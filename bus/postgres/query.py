"""Read-only SQL on a PostgreSQL bus (``loopbus sql --bus postgresql://...``).

The statement runs on a connection of its own, in a ``READ ONLY`` transaction with a
``statement_timeout``, and the connection is closed after: nothing the statement does
(writes are refused by the server, session settings, advisory locks) outlives it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from loopbus.bus.errors import (
    BusError,
    InvalidQuery,
    QueryInterrupted,
    QueryTimeout,
    ReadOnlyViolation,
    not_utf8_message,
)
from loopbus.bus.postgres import migrations
from loopbus.bus.postgres.connect import PgTarget, connect, parse_url

# Without a timeout of its own a statement still stops after this long: the server is shared
# (other hosts' agents write to it), so a runaway query must not hold a backend forever.
DEFAULT_STATEMENT_TIMEOUT_S = 300.0


def _placeholders(sql: str) -> str:
    """``?`` placeholders (SQLite's, what ``loopbus sql -p`` documents) as psycopg's ``%s``,
    outside quotes; a literal ``%`` doubled."""
    out: list[str] = []
    quote: str | None = None
    for c in sql:
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "?":
            out.append("%s")
            continue
        out.append("%%" if c == "%" else c)
    return "".join(out)


def query(
    target: str | PgTarget,
    sql: str,
    params: Sequence[Any] | dict[str, Any] = (),
    *,
    timeout_s: float | None = None,
    interrupt: Any = None,
) -> Any:
    """Run one statement read-only and return a :class:`loopbus.bus.sqlite.readonly.QueryResult`.

    Raises ReadOnlyViolation for a statement that would write, QueryTimeout after
    ``timeout_s`` (default :data:`DEFAULT_STATEMENT_TIMEOUT_S`), QueryInterrupted once ``interrupt`` (a flag with ``is_set()``) is set,
    InvalidQuery for anything the server refuses, BusNotFound when there is no bus.
    """
    import psycopg

    from loopbus.bus.sqlite.readonly import QueryResult

    if timeout_s is not None and not timeout_s > 0:
        raise BusError(f"timeout must be a positive number of seconds, not {timeout_s!r}")
    pg = target if isinstance(target, PgTarget) else parse_url(target)
    conn = connect(pg, autocommit=False)
    done = threading.Event()
    cancelled: list[BusError] = []

    def watch() -> None:
        while not done.wait(0.05):
            if interrupt is not None and interrupt.is_set():
                cancelled.append(QueryInterrupted("query interrupted"))
                conn.cancel_safe()
                return

    watcher = threading.Thread(target=watch, daemon=True) if interrupt is not None else None
    try:
        if migrations.read_version(conn, f"schema {pg.schema!r} of {pg}") == 0:
            from loopbus.bus.errors import BusNotFound

            raise BusNotFound(f"no bus in schema {pg.schema!r} of {pg}")
        conn.execute("SET TRANSACTION READ ONLY")
        limit_s = DEFAULT_STATEMENT_TIMEOUT_S if timeout_s is None else timeout_s
        conn.execute(f"SET LOCAL statement_timeout = {max(1, int(limit_s * 1000))}")
        if watcher is not None:
            watcher.start()
        try:
            if params:
                cursor = conn.execute(_placeholders(sql), params)
            else:
                cursor = conn.execute(sql)
            rows = [tuple(r) for r in cursor.fetchall()] if cursor.description else []
        except UnicodeEncodeError as exc:
            raise InvalidQuery(not_utf8_message(exc)) from None
        except psycopg.errors.ReadOnlySqlTransaction:
            raise ReadOnlyViolation(
                "refused: the statement would change the bus, and this query is read-only "
                "(only SELECT is allowed); use the loopbus publish/prune commands to change "
                "the bus"
            ) from None
        except psycopg.errors.QueryCanceled:
            if cancelled:
                raise cancelled[0] from None
            raise QueryTimeout(f"query timed out after {limit_s:g} s") from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ReadOnlyViolation(f"refused: {str(exc).splitlines()[0]}") from None
        except (psycopg.ProgrammingError, psycopg.DataError, psycopg.errors.SyntaxError) as exc:
            raise InvalidQuery(f"invalid query: {str(exc).splitlines()[0]}") from None
        except psycopg.Error as exc:
            raise InvalidQuery(f"invalid query: {str(exc).splitlines()[0]}") from None
        columns = [d.name for d in cursor.description] if cursor.description else []
        return QueryResult(columns=columns, rows=rows)
    finally:
        done.set()
        conn.close()


__all__ = ["query"]
