"""Migrations, pragmas, BEGIN IMMEDIATE, default path, refusing foreign/newer files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopbus.bus import Bus, SyncBus, default_bus_path
from loopbus.bus.errors import BusNotFound, NotABus, SchemaTooNew
from loopbus.bus.sqlite.migrations import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION


async def _pragma(bus: Bus, name: str) -> object:
    def read() -> object:
        return bus._wconn.execute(f"PRAGMA {name}").fetchone()[0]

    return await bus._writer._execute(read)


async def test_fresh_file_gets_schema_and_pragmas(bus_path: Path, bh: SimpleNamespace) -> None:
    async with Bus.connect(bus_path) as bus:
        assert await _pragma(bus, "journal_mode") == "wal"
        assert await _pragma(bus, "synchronous") == 2  # FULL
        assert await _pragma(bus, "busy_timeout") >= 5000
    names = {
        (kind, name) for kind, name in bh.raw_rows(bus_path, "SELECT type, name FROM sqlite_master")
    }
    assert {
        ("table", "outbox"),
        ("table", "cursors"),
        ("table", "sqlite_sequence"),  # AUTOINCREMENT
        ("view", "consumer_lag"),
        ("index", "outbox_by_type_id"),
        ("index", "outbox_by_run_id"),
        ("trigger", "outbox_append_only"),
    } <= names
    assert bh.raw_rows(bus_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert bh.raw_rows(bus_path, "PRAGMA application_id") == [(APPLICATION_ID,)]


async def test_normal_is_an_explicit_opt_in(bus_path: Path) -> None:
    async with Bus.connect(bus_path, synchronous="NORMAL") as bus:
        assert await _pragma(bus, "synchronous") == 1


async def test_old_file_is_migrated(bus_path: Path, bh: SimpleNamespace) -> None:
    # A file stuck at version 1 (tables only), with an event in it.
    conn = sqlite3.connect(bus_path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO outbox (agent, event_type, payload) VALUES ('a', 'old', '{}')")
    conn.close()
    async with Bus.connect(bus_path) as bus:
        assert [e.event_type for e in await bus.events()] == ["old"]
        assert await bus.publish("new", 1) == 2
    assert bh.raw_rows(bus_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert ("index", "outbox_by_type_id") in bh.raw_rows(
        bus_path, "SELECT type, name FROM sqlite_master"
    )


async def test_newer_file_is_refused_unchanged(bus_path: Path, bh: SimpleNamespace) -> None:
    async with Bus.connect(bus_path) as bus:
        await bus.publish("a", 1)
    conn = sqlite3.connect(bus_path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = bh.file_state(bus_path)
    with pytest.raises(SchemaTooNew, match=r"version \d+.*upgrade loopbus"):
        await Bus.open(bus_path)
    with pytest.raises(SchemaTooNew):
        SyncBus(bus_path)
    assert bh.file_state(bus_path) == before


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b""])
async def test_foreign_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.db"
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE notes (x)").connection.close()
    targets = [other]
    if content:
        path.write_bytes(content)
        targets.append(path)
    for target in targets:
        before = target.read_bytes()
        with pytest.raises(NotABus):
            await Bus.open(target)
        assert target.read_bytes() == before


async def test_create_false_needs_an_existing_file(bus_path: Path) -> None:
    with pytest.raises(BusNotFound, match="no bus file"):
        await Bus.open(bus_path, create=False)
    assert not bus_path.exists()
    await (await Bus.open(bus_path)).close()  # creates it
    async with Bus.connect(bus_path, create=False) as bus:
        assert await bus.last_id() == 0


def test_default_bus_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LOOPBUS_BUS", raising=False)
    assert default_bus_path() == Path("loopbus.db")
    monkeypatch.setenv("LOOPBUS_BUS", str(tmp_path / "env.db"))
    assert default_bus_path() == tmp_path / "env.db"
    with SyncBus() as bus:
        assert bus.path == tmp_path / "env.db"
        bus.publish("a", 1)
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("LOOPBUS_BUS")
    monkeypatch.chdir(tmp_path)
    with SyncBus() as bus:
        bus.publish("b", 2)
    assert (tmp_path / "loopbus.db").exists()


async def test_every_write_transaction_begins_immediate(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        statements: list[str] = []
        await bus._writer._execute(bus._wconn.set_trace_callback, statements.append)
        # Lone writes commit on the loop thread's own connection (loopbus.bus.sqlite.inline).
        bus._inline.connection().set_trace_callback(statements.append)
        await bus.publish("a", 1)
        await bus.publish_many([{"event_type": "b", "payload": 2}])
        await bus.ack("c", 1)
        async with bus.transaction() as tx:
            await tx.publish("d", 3)
        await bus.prune()
    in_tx = False
    for statement in statements:
        head = statement.lstrip().split(None, 1)[0].upper()
        if head == "BEGIN":
            assert statement.strip().upper() == "BEGIN IMMEDIATE"
            in_tx = True
        elif head in ("COMMIT", "ROLLBACK"):
            in_tx = False
        elif head in ("INSERT", "UPDATE", "DELETE"):
            assert in_tx, f"write outside BEGIN IMMEDIATE: {statement}"
    assert sum(s.strip().upper() == "BEGIN IMMEDIATE" for s in statements) == 5
