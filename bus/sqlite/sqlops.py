"""Synchronous SQLite work of the bus, run on the aiosqlite worker threads.

Each public function here does one whole unit of work (a group-commit batch, a prune, a
fetch) so that an async caller pays a single thread hop for it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from loopbus.bus.errors import BusError, NotABus
from loopbus.bus.events import CursorInfo, Event, PruneReport, events_from_rows
from loopbus.bus.sqlite import migrations

COLUMNS = "id, agent, event_type, payload, run_id, caused_by, created_at"
SELECT_EVENTS = f"SELECT {COLUMNS} FROM outbox"
INSERT_EVENT = (
    "INSERT INTO outbox (agent, event_type, payload, run_id, caused_by) VALUES (?, ?, ?, ?, ?)"
)
_HEAD_ID = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)"
_ACK = f"""
    INSERT INTO cursors (consumer, last_seen_id, updated_at) VALUES (?, ?, {migrations.NOW_SQL})
    ON CONFLICT (consumer) DO UPDATE
    SET last_seen_id = excluded.last_seen_id, updated_at = excluded.updated_at
    WHERE excluded.last_seen_id > cursors.last_seen_id
"""
_REGISTER = f"""
    INSERT INTO cursors (consumer, last_seen_id, updated_at) VALUES (?, 0, {migrations.NOW_SQL})
    ON CONFLICT (consumer) DO NOTHING
"""

_ADVANCE = f"""
    UPDATE cursors SET last_seen_id = :scanned, updated_at = {migrations.NOW_SQL}
    WHERE consumer = :consumer AND last_seen_id >= :delivered AND last_seen_id < :scanned
"""

# Operation kinds of a group-commit batch.
PUBLISH, PUBLISH_MANY, ACK, REGISTER, ADVANCE, UNREGISTER = range(6)

Row = tuple[str, str, str, str | None, int | None]
Op = tuple[Any, ...]  # (kind, arg, ...)


# --------------------------------------------------------------------------- connections


def prepare_writer(conn: sqlite3.Connection, path: str, synchronous: str, busy_ms: int) -> int:
    """Configure the writer connection and migrate the file; return the version it had.

    Nothing is written before the version check, so a newer or foreign file stays untouched.
    """
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    migrations.read_version(conn, path)
    _enable_wal(conn, path, busy_ms)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return migrations.migrate(conn, path)


def prepare_reader(conn: sqlite3.Connection, busy_ms: int) -> None:
    """Configure a reading connection (``query_only`` guards against accidental writes)."""
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute("PRAGMA query_only = 1")


def _enable_wal(conn: sqlite3.Connection, path: str, busy_ms: int) -> None:
    # Switching a fresh file to WAL needs an exclusive lock that the busy handler does not
    # always wait for, so several processes creating one bus at once retry here.
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    if str(mode).lower() != "wal":
        raise NotABus(
            f"cannot put {path} in WAL mode (got {mode!r}); keep the bus on a local file system"
        )


# --------------------------------------------------------------------------- writes


def _insert_rows(conn: sqlite3.Connection, rows: Sequence[Row]) -> list[int]:
    if len(rows) == 1:
        return [conn.execute(INSERT_EVENT, rows[0]).lastrowid]  # type: ignore[list-item]
    if not rows:
        return []
    conn.executemany(INSERT_EVENT, rows)
    # Ids of one statement under the write lock are consecutive (AUTOINCREMENT).
    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    return list(range(last - len(rows) + 1, last + 1))


def ack_cursor(conn: sqlite3.Connection, consumer: str, event_id: int) -> BusError | None:
    """Move ``consumer``'s cursor forward to ``event_id`` (inside the caller's transaction).

    Returns (does not raise) a BusError for an id beyond the last event, so that one bad ack
    does not abort the other operations of a group commit.
    """
    head = conn.execute(_HEAD_ID).fetchone()[0]
    if event_id > head:
        return BusError(
            f"cannot ack event {event_id} for consumer {consumer!r}: the last event id is "
            f"{head}; ack only ids you have received"
        )
    conn.execute(_ACK, (consumer, event_id))
    return None


def register(conn: sqlite3.Connection, consumer: str) -> int:
    """Register ``consumer`` (cursor 0 if new) and return its committed cursor."""
    conn.execute(_REGISTER, (consumer,))
    return conn.execute(
        "SELECT last_seen_id FROM cursors WHERE consumer = ?", (consumer,)
    ).fetchone()[0]


def advance_cursor(conn: sqlite3.Connection, consumer: str, delivered: int, scanned: int) -> int:
    """Move ``consumer``'s cursor to ``scanned`` if it is already at or past ``delivered``.

    A subscription that scanned up to ``scanned`` delivered nothing after ``delivered``: the
    events in between are ones the consumer does not subscribe to (or another partition's).
    Once every delivered event is acknowledged (cursor >= ``delivered``), the cursor may skip
    them; while one is not, the cursor stays put (at-least-once). Returns the cursor after.
    """
    conn.execute(_ADVANCE, {"consumer": consumer, "delivered": delivered, "scanned": scanned})
    row = conn.execute(
        "SELECT last_seen_id FROM cursors WHERE consumer = ?", (consumer,)
    ).fetchone()
    return 0 if row is None else row[0]


def unregister(conn: sqlite3.Connection, consumer: str) -> int | None:
    """Delete ``consumer``'s cursor; return the cursor it had, or None if it was unknown."""
    row = conn.execute(
        "DELETE FROM cursors WHERE consumer = ? RETURNING last_seen_id", (consumer,)
    ).fetchone()
    return None if row is None else row[0]


def apply_ops(conn: sqlite3.Connection, ops: Sequence[Op]) -> list[Any]:
    """Apply operations inside an open transaction; results in order (ids, errors, ...).

    Each op is ``(kind, arg)``, possibly followed by more items (the group-commit batch
    passes ``(kind, arg, future)`` triples as they are), which are ignored here.
    """
    n = len(ops)
    if n == 1 and ops[0][0] == PUBLISH:  # the single-publish fast path
        return [conn.execute(INSERT_EVENT, ops[0][1]).lastrowid]
    results: list[Any] = [None] * n
    i = 0
    while i < n:
        kind = ops[i][0]
        arg = ops[i][1]
        if kind == PUBLISH:
            # Consecutive single publishes go in one executemany.
            j = i
            while j < n and ops[j][0] == PUBLISH:
                j += 1
            results[i:j] = _insert_rows(conn, [op[1] for op in ops[i:j]])
            i = j
            continue
        if kind == PUBLISH_MANY:
            results[i] = _insert_rows(conn, arg)
        elif kind == ACK:
            results[i] = ack_cursor(conn, *arg)
        elif kind == REGISTER:
            results[i] = register(conn, arg)
        elif kind == ADVANCE:
            results[i] = advance_cursor(conn, *arg)
        elif kind == UNREGISTER:
            results[i] = unregister(conn, arg)
        else:  # pragma: no cover - programming error
            raise AssertionError(f"unknown op kind {kind}")
        i += 1
    return results


def begin_immediate(conn: sqlite3.Connection, busy_ms: int) -> None:
    """``BEGIN IMMEDIATE``, waiting up to ``busy_ms`` for another process's write lock.

    SQLite's own busy handler sleeps in growing steps (up to 100 ms), so a waiting writer
    keeps missing the short gaps between another process's commits. Here the wait polls
    every 0.1-2 ms instead; the connection's ``busy_timeout`` (>= 5 s) is restored after.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        return
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
    deadline = time.monotonic() + busy_ms / 1000
    delay = 0.0001
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            time.sleep(delay)
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
            delay = min(delay * 2, 0.002)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {busy_ms}")


def run_in_transaction(
    conn: sqlite3.Connection,
    ops: Sequence[Op],
    busy_ms: int,
    before_commit: Callable[[], None] | None = None,
) -> list[Any]:
    """``BEGIN IMMEDIATE``, apply ``ops``, ``COMMIT``; roll back and re-raise on error.

    ``before_commit`` (which must not raise) runs between the last statement and the COMMIT.
    """
    begin_immediate(conn, busy_ms)
    try:
        results = apply_ops(conn, ops)
        if before_commit is not None:
            before_commit()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def count_events(ops: Iterable[Op], results: Sequence[Any]) -> int:
    """How many events a committed batch published."""
    n = 0
    for op, res in zip(ops, results, strict=True):
        kind = op[0]
        if kind == PUBLISH and not isinstance(res, BaseException):
            n += 1
        elif kind == PUBLISH_MANY and isinstance(res, list):
            n += len(res)
    return n


# --------------------------------------------------------------------------- reads


def type_filter(types: str | Iterable[str] | None) -> tuple[str, list[str]]:
    """SQL (`` AND (...)``) and parameters selecting event types by fnmatch-style globs.

    Exact names use ``=`` (served by ``outbox_by_type_id``); globs use SQLite ``GLOB``, whose
    ``*``, ``?`` and ``[...]`` match like ``fnmatch.fnmatchcase`` (``[!...]`` is translated).
    """
    if types is None:
        return "", []
    patterns = [types] if isinstance(types, str) else list(types)
    clauses: list[str] = []
    params: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise BusError(f"invalid event type pattern {pattern!r}: use e.g. 'file.*' or '*'")
        if pattern.strip("*") == "":
            return "", []
        if any(c in pattern for c in "*?["):
            clauses.append("event_type GLOB ?")
            params.append(pattern.replace("[!", "[^"))
        else:
            clauses.append("event_type = ?")
            params.append(pattern)
    if not clauses:
        return " AND 0", []
    return " AND (" + " OR ".join(clauses) + ")", params


def fetch_rows_after(
    conn: sqlite3.Connection, position: int, filter_sql: str, params: Sequence[Any], limit: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Up to ``limit`` outbox rows (``COLUMNS``) after ``position`` and the new scan position.

    With a type filter, the position may move past non-matching events (up to the head seen
    in the same snapshot), so a selective subscriber does not rescan them on every wake-up.
    """
    if not filter_sql:
        rows = conn.execute(
            f"{SELECT_EVENTS} WHERE id > ? ORDER BY id LIMIT ?", (position, limit)
        ).fetchall()
        return rows, (rows[-1][0] if rows else position)
    conn.execute("BEGIN")  # one snapshot for the head and the matches
    try:
        head = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
        rows = conn.execute(
            f"{SELECT_EVENTS} WHERE id > ? AND id <= ?{filter_sql} ORDER BY id LIMIT ?",
            (position, head, *params, limit),
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    if len(rows) == limit:
        return rows, rows[-1][0]
    return rows, max(head, position)


def fetch_after(
    conn: sqlite3.Connection, position: int, filter_sql: str, params: Sequence[Any], limit: int
) -> tuple[list[Event], int]:
    """Like :func:`fetch_rows_after`, with the rows turned into events."""
    rows, position = fetch_rows_after(conn, position, filter_sql, params, limit)
    return events_from_rows(rows), position


def select_events(
    conn: sqlite3.Connection,
    since_id: int,
    types: str | Iterable[str] | None,
    run_id: str | None,
    limit: int | None,
) -> list[Event]:
    """Events with ``id > since_id`` in id order, optionally by type globs and run."""
    filter_sql, params = type_filter(types)
    sql = f"{SELECT_EVENTS} WHERE id > ?"
    args: list[Any] = [since_id]
    if run_id is not None:
        sql += " AND run_id = ?"
        args.append(run_id)
    sql += filter_sql + " ORDER BY id"
    args.extend(params)
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return events_from_rows(conn.execute(sql, args).fetchall())


# The literal event types (not parameters) let SQLite use migration 4's partial indexes.
_UNFINISHED_RUNS = """
    SELECT t.run_id FROM outbox AS t
    WHERE t.event_type = 'run.task' AND t.agent = ? AND t.run_id IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM outbox AS o WHERE o.event_type = 'run.outcome' AND o.run_id = t.run_id
      )
    ORDER BY t.id
"""


def unfinished_runs(conn: sqlite3.Connection, agent: str) -> list[str]:
    """Run ids of ``agent`` with a ``run.task`` event and no ``run.outcome``, oldest first."""
    return [row[0] for row in conn.execute(_UNFINISHED_RUNS, (agent,))]


def get_event(conn: sqlite3.Connection, event_id: int) -> Event | None:
    """The event with this id, or None (never published, or pruned)."""
    row = conn.execute(f"{SELECT_EVENTS} WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else Event.from_row(row)


def head_id(conn: sqlite3.Connection) -> int:
    """The last id ever assigned (0 for an empty bus); pruning does not lower it."""
    return conn.execute(_HEAD_ID).fetchone()[0]


def list_cursors(conn: sqlite3.Connection) -> list[CursorInfo]:
    """Every registered consumer with its lag (from the ``consumer_lag`` view)."""
    rows = conn.execute(
        "SELECT consumer, last_seen_id, lag, updated_at FROM consumer_lag ORDER BY consumer"
    ).fetchall()
    return [CursorInfo(*row) for row in rows]


# --------------------------------------------------------------------------- retention


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def prune(
    conn: sqlite3.Connection, dry_run: bool, max_age_s: float | None, busy_ms: int
) -> PruneReport:
    """Delete events every registered consumer has acknowledged (and, with ``max_age_s``,
    events older than that even if some consumer has not: those consumers are reported)."""
    begin_immediate(conn, busy_ms)
    try:
        slow = conn.execute(
            "SELECT consumer, last_seen_id FROM cursors ORDER BY last_seen_id, consumer LIMIT 1"
        ).fetchone()
        boundary = slow[1] if slow else 0
        notes: list[str] = []
        if slow is None:
            notes.append("no registered consumers: nothing is acknowledged, nothing to prune")
        if max_age_s is not None:
            cutoff = _iso(datetime.now(UTC) - timedelta(seconds=max_age_s))
            aged = conn.execute(
                "SELECT coalesce(max(id), 0) FROM outbox WHERE created_at < ?", (cutoff,)
            ).fetchone()[0]
            boundary = max(boundary, aged)
        deleted = conn.execute("SELECT count(*) FROM outbox WHERE id <= ?", (boundary,)).fetchone()[
            0
        ]
        overtaken: list[str] = []
        for consumer, seen, missed in conn.execute(
            """SELECT c.consumer, c.last_seen_id,
                      (SELECT count(*) FROM outbox o WHERE o.id > c.last_seen_id AND o.id <= ?)
               FROM cursors c WHERE c.last_seen_id < ? ORDER BY c.consumer""",
            (boundary, boundary),
        ):
            if missed:
                overtaken.append(consumer)
                notes.append(
                    f"prune with max_age_s={max_age_s:g} {'would delete' if dry_run else 'deletes'}"
                    f" {missed} event(s) that consumer {consumer!r} (cursor {seen}) has not "
                    f"acknowledged; it will never see them"
                )
        if not dry_run and deleted:
            conn.execute("DELETE FROM outbox WHERE id <= ?", (boundary,))
        conn.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return PruneReport(
        deleted=deleted,
        up_to_id=boundary if deleted else 0,
        slowest_consumer=slow[0] if slow else None,
        slowest_cursor=slow[1] if slow else None,
        dry_run=dry_run,
        overtaken=overtaken,
        warnings=notes,
    )
