"""Numbered schema migrations of a PostgreSQL bus (one schema per bus).

The same tables, columns and views as the SQLite bus (:mod:`loopbus.bus.sqlite.migrations`), in
PostgreSQL's dialect. The version lives in ``loopbus_meta``; a migration runs in one
transaction under an advisory lock, so processes opening a fresh bus at once migrate it
exactly once. Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

from typing import Any

from loopbus.bus.errors import NotABus, SchemaTooNew

APPLICATION = "loopbus"
NOW_SQL = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
# Advisory-lock keys, per schema (two buses in one database never wait for each other).
ORDER_LOCK_SQL = "hashtext(TG_TABLE_SCHEMA || '.loopbus.outbox')"
MIGRATE_LOCK_SQL = "hashtext(%s || '.loopbus.migrate')"


def _json(column: str, key: str) -> str:
    return f"({column}::json ->> '{key}')"


def _num(column: str, key: str) -> str:
    return f"loopbus_num({column}::json ->> '{key}')"


MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the tables. Ids come from a sequence (never reused, even after a prune); payload is
    # text (the exact JSON published, like SQLite's), checked as json (jsonb would refuse
    # "\u0000" in strings, which JSON allows).
    (
        """
        CREATE TABLE loopbus_meta (
            id              integer PRIMARY KEY CHECK (id = 1),
            application     text NOT NULL,
            schema_version  integer NOT NULL,
            pruned_through  bigint NOT NULL DEFAULT 0
        )
        """,
        f"""
        CREATE TABLE outbox (
            id          bigserial PRIMARY KEY,
            agent       text NOT NULL,
            event_type  text NOT NULL,
            payload     text NOT NULL CHECK (payload::json IS NOT NULL),
            run_id      text,
            caused_by   bigint,
            created_at  text NOT NULL DEFAULT ({NOW_SQL})
        )
        """,
        f"""
        CREATE TABLE cursors (
            consumer      text PRIMARY KEY,
            last_seen_id  bigint NOT NULL DEFAULT 0 CHECK (last_seen_id >= 0),
            updated_at    text NOT NULL DEFAULT ({NOW_SQL})
        )
        """,
        # id order = commit order: before an INSERT statement draws ids, wait until no other
        # inserting transaction is open (the lock ends with the transaction, after its commit
        # is visible), so ids are handed out in the order their transactions commit.
        f"""
        CREATE FUNCTION loopbus_order_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock({ORDER_LOCK_SQL});
            RETURN NULL;
        END $$
        """,
        """
        CREATE TRIGGER outbox_commit_order BEFORE INSERT ON outbox
        FOR EACH STATEMENT EXECUTE FUNCTION loopbus_order_inserts()
        """,
        """
        CREATE FUNCTION loopbus_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the outbox is append-only: events cannot be updated';
        END $$
        """,
        """
        CREATE TRIGGER outbox_append_only BEFORE UPDATE ON outbox
        FOR EACH ROW EXECUTE FUNCTION loopbus_append_only()
        """,
    ),
    # 2: the indexes and views of the SQLite bus (migrations 2, 4 and 5 there).
    (
        "CREATE INDEX outbox_by_type_id ON outbox (event_type, id)",
        "CREATE INDEX outbox_by_run_id ON outbox (run_id, id) WHERE run_id IS NOT NULL",
        "CREATE INDEX outbox_by_caused_by ON outbox (caused_by) WHERE caused_by IS NOT NULL",
        "CREATE INDEX outbox_run_tasks ON outbox (agent, id, run_id) WHERE event_type = 'run.task'",
        "CREATE INDEX outbox_run_outcomes ON outbox (run_id) WHERE event_type = 'run.outcome'",
        # A JSON number as a number, anything else as NULL (json_extract's typing in SQLite).
        """
        CREATE FUNCTION loopbus_num(value text) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$
            SELECT CASE WHEN value ~ '^-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?$'
                        THEN value::numeric END
        $$
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
        f"""
        CREATE VIEW runs AS
        SELECT t.run_id,
               t.agent,
               {_json("t.payload", "task")} AS task,
               coalesce({_json("o.payload", "kind")}, 'running') AS outcome,
               {_num("o.payload", "turns")} AS turns,
               t.created_at AS started_at,
               o.created_at AS ended_at,
               coalesce({_json("o.payload", "summary")}, {_json("o.payload", "reason")})
                 AS detail,
               (t.payload::json -> 'settings' ->> 'model') AS model,
               t.caused_by,
               t.id AS task_id
        FROM outbox AS t
        LEFT JOIN outbox AS o ON o.event_type = 'run.outcome' AND o.run_id = t.run_id
        WHERE t.event_type = 'run.task' AND t.run_id IS NOT NULL
        """,
        f"""
        CREATE VIEW model_calls AS
        SELECT m.id,
               m.run_id,
               m.agent,
               {_num("m.payload", "turn")} AS turn,
               {_num("m.payload", "prompt_tokens")} AS prompt_tokens,
               {_num("m.payload", "completion_tokens")} AS completion_tokens,
               {_num("m.payload", "cached_tokens")} AS cached_tokens,
               coalesce({_num("m.payload", "prefill_s")}, 0)
                 + coalesce({_num("m.payload", "decode_s")}, 0) AS model_s,
               round({_num("m.payload", "prompt_tokens")}
                     / nullif(loopbus_num(t.payload::json -> 'settings' ->> 'context_window'),
                              0), 4) AS context_fill,
               loopbus_num(t.payload::json -> 'settings' ->> 'budget') AS budget,
               (m.payload::json ->> 'elided') AS elided,
               {_json("m.payload", "prompt_sha256")} AS prompt_sha256,
               m.created_at
        FROM outbox AS m
        LEFT JOIN outbox AS t ON t.event_type = 'run.task' AND t.run_id = m.run_id
        WHERE m.event_type = 'run.model_call'
        """,
        f"""
        CREATE VIEW decisions AS
        SELECT id,
               run_id,
               agent,
               {_num("payload", "turn")} AS turn,
               (payload::json -> 'decision' ->> 'action') AS action,
               (payload::json ->> 'decision') AS decision,
               created_at
        FROM outbox
        WHERE event_type = 'run.decision'
        """,
        f"""
        CREATE VIEW tool_calls AS
        SELECT c.id,
               c.run_id,
               c.agent,
               {_num("c.payload", "turn")} AS turn,
               {_json("c.payload", "tool")} AS tool,
               {_json("c.payload", "args")} AS args,
               CASE r.event_type WHEN 'run.tool_result' THEN 'ok'
                                 WHEN 'run.error' THEN 'error' END AS status,
               {_json("r.payload", "result")} AS result,
               {_json("r.payload", "error")} AS error,
               c.created_at AS called_at,
               r.created_at AS finished_at,
               r.id AS result_id
        FROM outbox AS c
        LEFT JOIN outbox AS r ON r.caused_by = c.id
             AND r.event_type IN ('run.tool_result', 'run.error')
        WHERE c.event_type = 'run.tool_call'
        """,
        f"""
        CREATE VIEW errors AS
        SELECT id,
               run_id,
               agent,
               {_num("payload", "turn")} AS turn,
               {_json("payload", "kind")} AS kind,
               {_json("payload", "tool")} AS tool,
               {_json("payload", "error")} AS error,
               caused_by,
               created_at
        FROM outbox
        WHERE event_type = 'run.error'
        UNION ALL
        SELECT id, run_id, agent, {_num("payload", "turns")}, 'outcome.' ||
               {_json("payload", "kind")}, NULL, {_json("payload", "reason")},
               caused_by, created_at
        FROM outbox
        WHERE event_type = 'run.outcome' AND {_json("payload", "kind")} <> 'done'
        """,
    ),
    # 3: who holds each lease (loopbus.bus.lease); the lease itself is a session advisory lock.
    (
        f"""
        CREATE TABLE leases (
            name         text PRIMARY KEY,
            holder       text NOT NULL,
            acquired_at  text NOT NULL DEFAULT ({NOW_SQL})
        )
        """,
    ),
    # 4: the wake-up hint comes from the same trigger, so every INSERT statement (a foreign
    # writer's too) notifies the bus's channel at commit, and a publish saves a round trip.
    (
        f"""
        CREATE OR REPLACE FUNCTION loopbus_order_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock({ORDER_LOCK_SQL});
            PERFORM pg_notify('loopbus_' || TG_TABLE_SCHEMA, '');
            RETURN NULL;
        END $$
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def read_version(conn: Any, where: str) -> int:
    """The bus's schema version in the current schema (0: no bus there yet). Only reads.

    Raises NotABus for a schema holding an ``outbox`` that is not a loopbus bus, and
    SchemaTooNew for a bus from a newer loopbus.
    """
    meta, outbox = conn.execute(
        "SELECT to_regclass('loopbus_meta') IS NOT NULL, to_regclass('outbox') IS NOT NULL"
    ).fetchone()
    if not meta:
        if outbox:
            raise NotABus(f"{where} holds an outbox table that is not a loopbus bus")
        return 0
    row = conn.execute("SELECT application, schema_version FROM loopbus_meta").fetchone()
    if row is None or row[0] != APPLICATION:
        raise NotABus(f"{where} is not a loopbus bus")
    if row[1] > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{where} has bus schema version {row[1]}, but this loopbus only knows versions "
            f"up to {SCHEMA_VERSION}; upgrade loopbus to open it"
        )
    return int(row[1])


def migrate(conn: Any, schema: str, where: str) -> int:
    """Create the schema if needed and bring the bus up to :data:`SCHEMA_VERSION`; return the
    version it had. ``conn`` is a non-autocommit connection with ``search_path`` set."""
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if exists and (current := read_version(conn, where)) == SCHEMA_VERSION:
        # The common case writes nothing and needs no privilege beyond using the schema.
        conn.commit()
        return current
    conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK_SQL})", (schema,))
    if not exists:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    before = read_version(conn, where)  # again, under the lock
    for number in range(before, SCHEMA_VERSION):
        for statement in MIGRATIONS[number]:
            conn.execute(statement)
    if before == 0:
        conn.execute(
            "INSERT INTO loopbus_meta (id, application, schema_version) VALUES (1, %s, %s)",
            (APPLICATION, SCHEMA_VERSION),
        )
    elif before < SCHEMA_VERSION:
        conn.execute("UPDATE loopbus_meta SET schema_version = %s", (SCHEMA_VERSION,))
    conn.commit()
    return before


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "read_version"]
