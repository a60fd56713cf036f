"""Bus addresses: a path, sqlite:///PATH or postgresql://...; bus.open picks the backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopbus import bus
from loopbus.bus.errors import BusError
from loopbus.bus.postgres.connect import parse_url
from loopbus.bus.store import backend_of, describe, sqlite_path


def test_backend_of_and_sqlite_path(tmp_path: Path) -> None:
    assert backend_of("bus.db") == backend_of(tmp_path / "x.db") == "sqlite"
    assert backend_of("weird:name.db") == "sqlite"  # no "://": a file name
    assert backend_of("sqlite:///tmp/b.db") == "sqlite"
    assert backend_of("postgresql://h/db") == backend_of("postgres://h/db") == "postgres"
    assert sqlite_path("sqlite:///tmp/b.db") == "/tmp/b.db"
    assert sqlite_path("sqlite://rel/b.db") == "rel/b.db"
    assert sqlite_path("plain.db") == "plain.db"
    with pytest.raises(BusError, match="unknown bus URL scheme 'mysql'"):
        backend_of("mysql://h/db")
    with pytest.raises(BusError, match="no file in the bus URL"):
        sqlite_path("sqlite://")


def test_postgres_url_schema_and_hidden_password() -> None:
    target = parse_url("postgresql://u:secret@h:5432/db?schema=team_a&sslmode=disable")
    assert target.schema == "team_a"
    assert "schema" not in target.conninfo and "sslmode=disable" in target.conninfo
    assert "secret" not in str(target) and "secret" in target.conninfo
    assert describe("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert parse_url("postgresql://h/db").schema == "public"
    with pytest.raises(BusError, match="invalid schema"):
        parse_url("postgresql://h/db?schema=Robert');DROP")


def test_open_sqlite_url_is_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with bus.open(f"sqlite://{path}") as store:
        first = store.publish("a.b", {})
    with bus.SyncBus(path) as store:
        assert [e.id for e in store.events()] == [first]
    with pytest.raises(BusError, match=r"opens SQLite buses only; bus.open\(url\)"):
        bus.SyncBus("postgresql://h/db")
