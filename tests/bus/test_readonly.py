"""The read-only query helper."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopbus.bus import SyncBus, query
from loopbus.bus.errors import (
    BusError,
    BusNotFound,
    InvalidQuery,
    ReadOnlyViolation,
    RefusedFunction,
)


@pytest.fixture
def filled(bus_path: Path) -> Path:
    with SyncBus(bus_path) as bus:
        bus.publish("file.found", {"path": "a.py", "size": 3})
        bus.publish("finding", {"line": 2})
        bus.ack("c", 1)
    return bus_path


def test_select_returns_columns_and_rows(filled: Path) -> None:
    result = query(filled, "SELECT id, event_type, payload ->> '$.path' AS path FROM outbox")
    assert result.columns == ["id", "event_type", "path"]
    assert result.rows == [(1, "file.found", "a.py"), (2, "finding", None)]
    lag = query(filled, "SELECT consumer, lag FROM consumer_lag")
    assert lag.rows == [("c", 1)]
    assert query(filled, "SELECT * FROM outbox WHERE id > ?", (5,)).rows == []
    assert query(filled, "PRAGMA table_info(outbox)").rows[0][1] == "id"
    assert query(filled, "PRAGMA user_version").rows[0][0] >= 1


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO outbox (agent, event_type, payload) VALUES ('x', 'y', '1')",
        "UPDATE cursors SET last_seen_id = 0",
        "DELETE FROM outbox",
        "DROP TABLE outbox",
        "DROP VIEW consumer_lag",
        "CREATE TABLE evil (x)",
        "ALTER TABLE outbox ADD COLUMN z",
        "ATTACH DATABASE ':memory:' AS other",
        "PRAGMA user_version = 99",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA query_only = 0",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "REPLACE INTO cursors VALUES ('c', 0, 'now')",
        "VACUUM",
        "BEGIN IMMEDIATE",
    ],
)
def test_writes_are_refused_and_change_nothing(filled: Path, bh: SimpleNamespace, sql: str) -> None:
    before = bh.file_state(filled)
    with pytest.raises(ReadOnlyViolation, match="read-only"):
        query(filled, sql)
    assert bh.file_state(filled) == before


def test_bad_queries(filled: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidQuery, match="syntax"):
        query(filled, "SELEC 1")
    with pytest.raises(InvalidQuery, match="one statement"):
        query(filled, "SELECT 1; DELETE FROM outbox")
    with pytest.raises(BusNotFound):
        query(tmp_path / "missing.db", "SELECT 1")
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize(
    ("name", "sql"),
    [
        ("fts3_tokenizer", "SELECT fts3_tokenizer('simple')"),
        ("fts3_tokenizer", "SELECT FTS3_Tokenizer('porter')"),
        ("fts3_tokenizer", "WITH t(x) AS (SELECT fts3_tokenizer('simple')) SELECT hex(x) FROM t"),
        ("fts3_tokenizer", "SELECT fts3_tokenizer('simple', x'0000000000000000')"),
        ("load_extension", "SELECT load_extension('/tmp/evil.so')"),
    ],
)
def test_dangerous_functions_are_refused_by_name(filled: Path, name: str, sql: str) -> None:
    # fts3_tokenizer('simple') returns a pointer to a C structure: an address leak.
    with pytest.raises(RefusedFunction, match=rf"refused: {name}\(\) is not allowed"):
        query(filled, sql)
    assert query(filled, "SELECT upper('ok')").rows == [("OK",)]  # other functions still work


def test_a_fifo_or_device_is_refused_without_blocking(tmp_path: Path) -> None:
    # A read-only open of a FIFO blocks until a writer appears: it must never get that far.
    fifo = tmp_path / "bus.fifo"
    os.mkfifo(fifo)
    with pytest.raises(BusError, match="is a named pipe"):
        query(fifo, "SELECT 1")
    with pytest.raises(BusError, match="is a device"):
        query("/dev/null", "SELECT 1")
    with pytest.raises(BusError, match="is a named pipe"):
        SyncBus(fifo)
    with pytest.raises(BusError, match="is a directory"):
        SyncBus(tmp_path)
