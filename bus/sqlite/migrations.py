"""Numbered schema migrations of a bus file.

The schema is created only here. ``MIGRATIONS[i]`` upgrades a file from version ``i`` to
``i + 1``; the version lives in ``PRAGMA user_version`` and loopbus files are marked with
``PRAGMA application_id``. A migration runs inside one ``BEGIN IMMEDIATE`` transaction that
re-reads the version first, so processes opening a fresh file at the same time migrate it
exactly once. A file whose version is above :data:`SCHEMA_VERSION` was written by a newer
loopbus and is refused with :class:`~loopbus.bus.errors.SchemaTooNew` before anything is written.

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

from loopbus.bus.errors import NotABus, SchemaTooNew

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
    # (loopbus.bus.sqlite.sqlops.unfinished_runs). Partial indexes: only those two event types are indexed,
    # so no other publish pays for them; event_type is a column too, which makes them covering
    # (SQLite 3.40 does not infer it from the WHERE clause).
    (
        "CREATE INDEX outbox_run_tasks ON outbox (agent, id, run_id, event_type) "
        "WHERE event_type = 'run.task'",
        "CREATE INDEX outbox_run_outcomes ON outbox (run_id, event_type) "
        "WHERE event_type = 'run.outcome'",
    ),
    # 5: `caused_by` becomes a declared foreign key (for Datasette and other tools that follow
    # them), and views per event family. SQLite adds a foreign key only by rebuilding the table:
    # the new outbox keeps every row and id, the AUTOINCREMENT high-water mark (so ids are still
    # never reused), the CHECK, the trigger and every index. The key is declared, not enforced:
    # loopbus never turns on PRAGMA foreign_keys, so prune can delete an event that later events
    # were caused by, and caused_by may name a pruned event.
    (
        # RENAME re-parses views that name the table; this one is recreated below.
        "DROP VIEW consumer_lag",
        f"""
        CREATE TABLE outbox_new (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            agent       TEXT NOT NULL,
            event_type  TEXT NOT NULL,
            payload     TEXT NOT NULL CHECK (json_valid(payload)),
            run_id      TEXT,
            caused_by   INTEGER REFERENCES outbox (id),
            created_at  TEXT NOT NULL DEFAULT ({NOW_SQL})
        )
        """,
        "INSERT INTO outbox_new (id, agent, event_type, payload, run_id, caused_by, created_at) "
        "SELECT id, agent, event_type, payload, run_id, caused_by, created_at FROM outbox "
        "ORDER BY id",
        # The copy sets outbox_new's sequence to its largest id; a prune may have deleted ids
        # above that, so carry the old high-water mark over.
        "DELETE FROM sqlite_sequence WHERE name = 'outbox_new'",
        "INSERT INTO sqlite_sequence (name, seq) "
        "SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox'",
        "DROP TABLE outbox",  # its indexes and trigger go with it
        "ALTER TABLE outbox_new RENAME TO outbox",
        "CREATE INDEX outbox_by_type_id ON outbox (event_type, id)",
        "CREATE INDEX outbox_by_run_id ON outbox (run_id, id) WHERE run_id IS NOT NULL",
        "CREATE INDEX outbox_by_caused_by ON outbox (caused_by) WHERE caused_by IS NOT NULL",
        "CREATE INDEX outbox_run_tasks ON outbox (agent, id, run_id, event_type) "
        "WHERE event_type = 'run.task'",
        "CREATE INDEX outbox_run_outcomes ON outbox (run_id, event_type) "
        "WHERE event_type = 'run.outcome'",
        """
        CREATE TRIGGER outbox_append_only BEFORE UPDATE ON outbox
        BEGIN
            SELECT RAISE(ABORT, 'the outbox is append-only: events cannot be updated');
        END
        """,
        """
        CREATE VIEW consumer_lag AS
        SELECT c.consumer,
               c.last_seen_id,
               (SELECT count(*) FROM outbox o WHERE o.id > c.last_seen_id) AS lag,
               (SELECT coalesce(max(id), 0) FROM outbox) AS head_id,
               c.updated_at
        FROM cursors c
        """,
        # One row per run (run.task, its run.outcome if any): the partial indexes of migration 4.
        """
        CREATE VIEW runs AS
        SELECT t.run_id,
               t.agent,
               json_extract(t.payload, '$.task') AS task,
               coalesce(json_extract(o.payload, '$.kind'), 'running') AS outcome,
               json_extract(o.payload, '$.turns') AS turns,
               t.created_at AS started_at,
               o.created_at AS ended_at,
               coalesce(json_extract(o.payload, '$.summary'),
                        json_extract(o.payload, '$.reason')) AS detail,
               json_extract(t.payload, '$.settings.model') AS model,
               t.caused_by,
               t.id AS task_id
        FROM outbox AS t
        LEFT JOIN outbox AS o ON o.event_type = 'run.outcome' AND o.run_id = t.run_id
        WHERE t.event_type = 'run.task' AND t.run_id IS NOT NULL
        """,
        # Each model call: tokens, time and context fill against the run's budget.
        """
        CREATE VIEW model_calls AS
        SELECT m.id,
               m.run_id,
               m.agent,
               json_extract(m.payload, '$.turn') AS turn,
               json_extract(m.payload, '$.prompt_tokens') AS prompt_tokens,
               json_extract(m.payload, '$.completion_tokens') AS completion_tokens,
               json_extract(m.payload, '$.cached_tokens') AS cached_tokens,
               coalesce(json_extract(m.payload, '$.prefill_s'), 0)
                 + coalesce(json_extract(m.payload, '$.decode_s'), 0) AS model_s,
               round(1.0 * json_extract(m.payload, '$.prompt_tokens')
                     / nullif(json_extract(t.payload, '$.settings.context_window'), 0), 4)
                 AS context_fill,
               json_extract(t.payload, '$.settings.budget') AS budget,
               json_extract(m.payload, '$.elided') AS elided,
               json_extract(m.payload, '$.prompt_sha256') AS prompt_sha256,
               m.created_at
        FROM outbox AS m
        LEFT JOIN outbox AS t ON t.event_type = 'run.task' AND t.run_id = m.run_id
        WHERE m.event_type = 'run.model_call'
        """,
        # Each decision the model made.
        """
        CREATE VIEW decisions AS
        SELECT id,
               run_id,
               agent,
               json_extract(payload, '$.turn') AS turn,
               json_extract(payload, '$.decision.action') AS action,
               json_extract(payload, '$.decision') AS decision,
               created_at
        FROM outbox
        WHERE event_type = 'run.decision'
        """,
        # Each tool call with its result or error (caused_by the call), NULL while running.
        """
        CREATE VIEW tool_calls AS
        SELECT c.id,
               c.run_id,
               c.agent,
               json_extract(c.payload, '$.turn') AS turn,
               json_extract(c.payload, '$.tool') AS tool,
               json_extract(c.payload, '$.args') AS args,
               CASE r.event_type WHEN 'run.tool_result' THEN 'ok'
                                 WHEN 'run.error' THEN 'error' END AS status,
               json_extract(r.payload, '$.result') AS result,
               json_extract(r.payload, '$.error') AS error,
               c.created_at AS called_at,
               r.created_at AS finished_at,
               r.id AS result_id
        FROM outbox AS c
        LEFT JOIN outbox AS r ON r.caused_by = c.id
             AND r.event_type IN ('run.tool_result', 'run.error')
        WHERE c.event_type = 'run.tool_call'
        """,
        # Parse errors, tool errors, outcomes unknown after a crash, and failed runs.
        """
        CREATE VIEW errors AS
        SELECT id,
               run_id,
               agent,
               json_extract(payload, '$.turn') AS turn,
               json_extract(payload, '$.kind') AS kind,
               json_extract(payload, '$.tool') AS tool,
               json_extract(payload, '$.error') AS error,
               caused_by,
               created_at
        FROM outbox
        WHERE event_type = 'run.error'
        UNION ALL
        SELECT id, run_id, agent, json_extract(payload, '$.turns'), 'outcome.' ||
               json_extract(payload, '$.kind'), NULL, json_extract(payload, '$.reason'),
               caused_by, created_at
        FROM outbox
        WHERE event_type = 'run.outcome' AND json_extract(payload, '$.kind') <> 'done'
        """,
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
