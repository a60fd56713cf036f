"""PostgreSQL-only behaviour of the bus (the shared contract is in tests/bus/contract)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from loopbus import bus
from loopbus.bus.errors import BusError, BusNotFound, NotABus, QueryTimeout, SchemaTooNew
from loopbus.bus.postgres import migrations


@pytest.fixture
def url() -> Iterator[str]:
    """A fresh schema on the test server (skipped locally without one, failing under CI)."""
    from loopbus.bus.postgres.testing import fresh_schema

    with fresh_schema() as target:
        yield target


def _raw(url: str) -> Any:
    import psycopg

    from loopbus.bus.postgres.connect import connect, parse_url

    conn = connect(parse_url(url), autocommit=True)
    assert isinstance(conn, psycopg.Connection)
    return conn


def test_foreign_inserts_notify_and_the_safety_poll_covers_lost_notifications(url: str) -> None:
    conn = _raw(url)
    insert = "INSERT INTO outbox (agent, event_type, payload) VALUES ('x', 'raw.insert', '{}')"
    with bus.open(url, safety_poll_s=30) as store:
        # A foreign writer's INSERT notifies too (the trigger does it): woken at once.
        it = store.subscribe("c", timeout=5)
        timer = threading.Timer(0.2, lambda: conn.execute(insert))
        started = time.monotonic()
        timer.start()
        assert next(it).event_type == "raw.insert"
        assert time.monotonic() - started < 2  # not the 30 s safety poll
        timer.join()
    with bus.open(url, safety_poll_s=0.3) as store:
        store._ensure_waker().close()  # its notifications are lost from now on
        time.sleep(0.7)
        it = store.subscribe("d", ["raw.*"], timeout=5)
        assert next(it).id == 1
        store.ack("d", 1)
        timer = threading.Timer(0.2, lambda: conn.execute(insert))
        started = time.monotonic()
        timer.start()
        assert next(it).id == 2  # found by the safety poll alone
        assert time.monotonic() - started < 2
        timer.join()
    conn.close()


def test_open_refuses_foreign_newer_and_missing_buses(url: str) -> None:
    with pytest.raises(BusNotFound, match="no bus in schema"):
        bus.open(url, create=False)
    with pytest.raises(BusNotFound):
        bus.query(url, "SELECT 1")
    with bus.open(url) as store:
        store.publish("a.b", {})
    conn = _raw(url)
    conn.execute("UPDATE loopbus_meta SET schema_version = %s", (migrations.SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match="upgrade loopbus"):
        bus.open(url)
    conn.execute("DROP TABLE loopbus_meta")
    with pytest.raises(NotABus, match="not a loopbus bus"):
        bus.open(url)
    conn.close()


def test_outbox_is_append_only_and_ids_follow_commits(url: str) -> None:
    with bus.open(url) as store:
        first = store.publish("a.b", {"n": 1})
    conn = _raw(url)
    import psycopg

    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("UPDATE outbox SET payload = '{}' WHERE id = %s", (first,))
    conn.close()


def test_query_runs_alone_and_leaves_nothing_behind(url: str) -> None:
    with bus.open(url) as store:
        store.publish("a.b", {})
        # An advisory lock taken by a query ends with its connection: it cannot block writers.
        bus.query(url, "SELECT pg_advisory_lock(42)")
        conn = _raw(url)
        assert conn.execute("SELECT pg_try_advisory_lock(42)").fetchone()[0] is True
        conn.close()
        with pytest.raises(QueryTimeout):
            bus.query(url, "SELECT pg_sleep(5)", timeout_s=0.2)
        with pytest.raises(BusError):
            bus.query(url, "SELECT nextval('outbox_id_seq')")  # a write, even in a SELECT
        assert store.publish("a.b", {}) == 2  # the refused nextval drew no id


def test_concurrent_opens_of_a_fresh_bus_migrate_it_once(url: str) -> None:
    errors: list[BaseException] = []
    stores: list[Any] = []

    def opener() -> None:
        try:
            stores.append(bus.open(url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(stores) == 4
    ids = [store.publish("a.b", {}) for store in stores]
    assert ids == [1, 2, 3, 4]
    conn = _raw(url)
    assert conn.execute("SELECT schema_version FROM loopbus_meta").fetchall() == [
        (migrations.SCHEMA_VERSION,)
    ]
    conn.close()
    for store in stores:
        store.close()
