"""Numbered schema migrations of a bus file.

The schema is created only here. ``MIGRATIONS[i]`` upgrades a file from version ``i`` to
``i + 1``; the version lives in ``PRAGMA user_version`` and loopbus files are marked with
``PRAGMA application_id``. A migration runs inside one ``BEGIN IMMEDIATE`` transaction that
re-reads the version first, so processes opening a fresh file at the same time migrate it
exactly once. A file whose version is above :data:`SCHEMA_VERSION` was written by a newer
loopbus and is refused with :class:`~bus.errors.SchemaTooNew` before anything is written.

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

from bus.errors import NotABus, SchemaTooNew

# 'LPBS': tells a loopbus file from any other SQLite database.
APPLICATION_ID = 0x4C504253

NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the tables. AUTOINCREMENT (not a plain INTEGER PRIMARY KEY) so that ids are never
    # reused after a prune: a consumer reading `id > cursor` would silently miss events.
    # payload is declared TEXT, not JSON: a JSON column has NUMERIC affinity, which would store
    # a top-level number payload as an SQL number (1.0 -> 1, 0.30000000000000004 -> 0.3).
    (
        f"""
        CREATE TABLE outbox (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            agent       TEXT NOT NULL,
            event_type  TEXT NOT NULL,
            payload     TEXT NOT NULL CHECK (json_valid(payload)),
            run_id      TEXT,
            caused_by   INTEGER,
            created_at  TEXT NOT NULL DEFAULT ({NOW_SQL})
        )
        """,
        f"""
        CREATE TABLE cursors (
            consumer      TEXT PRIMARY KEY,
            last_seen_id  INTEGER NOT NULL DEFAULT 0 CHECK (last_seen_id >= 0),
            updated_at    TEXT NOT NULL DEFAULT ({NOW_SQL})
        )
        """,
    ),
    # 2: indexes, each named for the query it serves, and the per-consumer lag view.
    (
        # subscribe/events with exact types: `WHERE event_type = ? AND id > ? ORDER BY id`
        "CREATE INDEX outbox_by_type_id ON outbox (event_type, id)",
        # a run's events in order: `WHERE run_id = ? ORDER BY id` (replay, export)
        "CREATE INDEX outbox_by_run_id ON outbox (run_id, id) WHERE run_id IS NOT NULL",
        # what an event caused: `WHERE caused_by = ?`
        "CREATE INDEX outbox_by_caused_by ON outbox (caused_by) WHERE caused_by IS NOT NULL",
        """
        CREATE VIEW consumer_lag AS
        SELECT c.consumer,
               c.last_seen_id,
               (SELECT count(*) FROM outbox o WHERE o.id > c.last_seen_id) AS lag,
               (SELECT coalesce(max(id), 0) FROM outbox) AS head_id,
               c.updated_at
        FROM cursors c
        """,
    ),
    # 3: the outbox is append-only; only prune (DELETE) may remove events.
    (
        """
        CREATE TRIGGER outbox_append_only BEFORE UPDATE ON outbox
        BEGIN
            SELECT RAISE(ABORT, 'the outbox is append-only: events cannot be updated');
        END
        """,
    ),
    # 4: runs without an outcome (an agent process resumes them when it starts):
    # `run.task` rows of an agent that have no `run.outcome` row with their run_id
    # (bus.sqlops.unfinished_runs). Partial indexes: only those two event types are indexed,
    # so no other publish pays for them; event_type is a column too, which makes them covering
    # (SQLite 3.40 does not infer it from the WHERE clause).
    (
        "CREATE INDEX outbox_run_tasks ON outbox (agent, id, run_id, event_type) "
        "WHERE event_type = 'run.task'",
        "CREATE INDEX outbox_run_outcomes ON outbox (run_id, event_type) "
        "WHERE event_type = 'run.outcome'",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def read_version(conn: sqlite3.Connection, path: str) -> int:
    """Return the file's schema version after checking it is a loopbus bus we can read.

    Raises NotABus for a non-SQLite file or a foreign SQLite database, SchemaTooNew for a file
    from a newer loopbus. Only reads.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id == 0 and version == 0:
            tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
            if tables:
                app_id = -1  # a foreign database that happens to have no marks
    except sqlite3.DatabaseError as exc:
        raise NotABus(f"{path} is not a loopbus bus file ({exc})") from None
    if app_id not in (0, APPLICATION_ID):
        raise NotABus(
            f"{path} is an SQLite database but not a loopbus bus; pass another --bus path"
        )
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has bus schema version {version}, but this loopbus only knows versions "
            f"up to {SCHEMA_VERSION}; upgrade loopbus (pip install -U loopbus) to open it"
        )
    return version


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the file up to :data:`SCHEMA_VERSION`; return the version it had before.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    before = read_version(conn, path)
    if before == SCHEMA_VERSION:
        return before
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        current = read_version(conn, path)
        for number in range(current, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return before
