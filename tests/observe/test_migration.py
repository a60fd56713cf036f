"""Migration 5: caused_by as a declared foreign key (a table rebuild) and the Datasette views."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from loopbus.bus import SyncBus, query
from loopbus.bus.migrations import MIGRATIONS, SCHEMA_VERSION


def _v4_file(path: Path) -> None:
    """A bus file as loopbus wrote it before migration 5."""
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:4]:
        for statement in migration:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.close()


def _schema(path: Path, kinds: tuple[str, ...]) -> set[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    marks = ", ".join("?" for _ in kinds)
    rows = conn.execute(
        f"SELECT type, name, sql FROM sqlite_master WHERE type IN ({marks})", kinds
    ).fetchall()
    conn.close()
    return {(kind, name, " ".join(sql.split())) for kind, name, sql in rows if sql}


def test_rebuild_keeps_rows_ids_sequence_indexes_trigger_and_check(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v4_file(path)
    before_indexes = _schema(path, ("index", "trigger"))
    conn = sqlite3.connect(path, isolation_level=None)
    for i in range(1, 9):
        conn.execute(
            "INSERT INTO outbox (agent, event_type, payload, run_id, caused_by) "
            "VALUES ('a', 'run.task', ?, ?, ?)",
            (f'{{"n": {i}}}', f"r{i}", i - 1 or None),
        )
    conn.execute("INSERT INTO cursors (consumer, last_seen_id) VALUES ('c', 3)")
    conn.execute("DELETE FROM outbox WHERE id >= 7")  # the sequence stays at 8
    rows_before = conn.execute("SELECT * FROM outbox ORDER BY id").fetchall()
    conn.close()

    with SyncBus(path) as bus:
        assert bus.publish("after", {"x": 1}, caused_by=2) == 9  # ids are never reused
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT * FROM outbox WHERE id < 9 ORDER BY id").fetchall() == rows_before
    assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchall() == [
        (9,)
    ]
    fks = conn.execute("PRAGMA foreign_key_list(outbox)").fetchall()
    assert [(fk[2], fk[3], fk[4]) for fk in fks] == [("outbox", "caused_by", "id")]
    # Every index and the trigger come back exactly as migrations 2-4 made them.
    assert _schema(path, ("index", "trigger")) == before_indexes
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE outbox SET agent = 'x' WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute("INSERT INTO outbox (agent, event_type, payload) VALUES ('a', 't', '{')")
    assert conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name LIKE '%_new'"
    ).fetchone() == (0,)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_fresh_bus_declares_the_key_and_prune_deletes_causes(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    with SyncBus(path) as bus:
        first = bus.publish("cause", {})
        effect = bus.publish("effect", {}, caused_by=first)
        bus.ack("reader", first)
        # Declared, not enforced: the bus's own connections keep foreign_keys off, so a prune
        # deletes an event that a kept event was caused by.
        assert bus.prune().deleted == 1
        assert [e.id for e in bus.events()] == [effect]
        assert bus.get(effect).caused_by == first  # type: ignore[union-attr]
        # ... and an event may name a cause that is gone.
        assert bus.publish("late", {}, caused_by=first) == effect + 1
    fks = query(path, "PRAGMA foreign_key_list(outbox)").rows
    assert [(fk[2], fk[3], fk[4]) for fk in fks] == [("outbox", "caused_by", "id")]
    # What a tool that enforces keys would report: the dangling references, nothing else.
    dangling = query(path, "PRAGMA foreign_key_check(outbox)").rows
    assert sorted(row[1] for row in dangling) == [effect, effect + 1]
