"""The store contract: what every bus backend guarantees, whatever stores the events.

Each test runs once per backend (see conftest.BACKENDS) through the public bus API only.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopbus import bus
from loopbus.bus.errors import (
    BusError,
    InvalidEventType,
    InvalidPayload,
    PayloadTooLarge,
    PruneWarning,
    QueryTimeout,
    ReadOnlyViolation,
)
from loopbus.bus.lease import LeaseHeld

OpenBus = Callable[..., Any]


def _collect(reader: Any, position: int, seen: list[int]) -> int:
    """Read after ``position`` the way a follower does; return the new position."""
    for event in reader.events(since_id=position):
        seen.append(event.id)
        position = event.id
    return position


# --------------------------------------------------------------------------- ordering


def test_held_open_transaction_orders_later_commits_after_it(open_bus: OpenBus) -> None:
    a, b, c = open_bus(), open_bus(), open_bus()
    seen: list[int] = []
    position = 0
    with a.transaction() as tx:
        held = tx.publish("contract.held", {"n": 0})
        writer = threading.Thread(target=lambda: b.publish("contract.later", {"n": 1}))
        writer.start()
        time.sleep(0.4)  # b's commit would land now if nothing ordered it after the open tx
        position = _collect(c, position, seen)
        assert held not in seen  # not committed yet
    writer.join(15)
    assert not writer.is_alive()
    position = _collect(c, position, seen)
    everything = [e.id for e in c.events()]
    assert len(everything) == 2 and everything[0] == held
    # A follower reading by position never skipped the event committed later with a lower id.
    assert seen == everything


@pytest.mark.slow
def test_concurrent_writer_processes_keep_commit_order(
    open_bus: OpenBus, spawn_writer: Callable[..., Any]
) -> None:
    reader = open_bus()  # creates the bus before the writers start
    writers, count = 3, 60
    procs = [spawn_writer(f"w{i}", count) for i in range(writers)]
    seen: list[int] = []
    position = 0
    while any(p.poll() is None for p in procs):
        position = _collect(reader, position, seen)
        time.sleep(0.005)
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    _collect(reader, position, seen)
    events = reader.events()
    assert len(events) == writers * count
    assert seen == [e.id for e in events]  # a live follower missed nothing, saw no duplicate
    assert len(set(seen)) == len(seen)
    per_writer: dict[str, list[int]] = {}
    for event in events:
        per_writer.setdefault(event.payload["w"], []).append(event.payload["seq"])
    assert per_writer == {f"w{i}": list(range(count)) for i in range(writers)}


def test_every_backend_is_a_store(open_bus: OpenBus) -> None:
    store = open_bus(max_payload_bytes=1234)
    assert isinstance(store, bus.Store)  # every method and property of the protocol
    assert store.max_payload_bytes == 1234


def test_ids_are_never_reused(open_bus: OpenBus) -> None:
    b = open_bus()
    ids = [b.publish("contract.a", {"i": i}) for i in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    b.ack("c", ids[-1])
    assert b.prune().deleted == 3
    assert b.events() == []
    assert b.last_id() == ids[-1]  # pruning never lowers the head
    after = b.publish("contract.a", {"i": 3})
    assert after > ids[-1]
    reopened = open_bus()
    assert reopened.last_id() == after
    assert reopened.publish("contract.a", {"i": 4}) > after


def test_publish_many_gets_consecutive_ids_in_order(open_bus: OpenBus) -> None:
    b = open_bus()
    ids = b.publish_many(
        [{"event_type": "contract.m", "payload": {"i": i}, "agent": "m"} for i in range(5)]
    )
    assert ids == list(range(ids[0], ids[0] + 5))
    assert [e.payload["i"] for e in b.events()] == list(range(5))


# --------------------------------------------------------------------------- cursors


def test_cursors_are_monotonic_and_bounded_by_the_head(open_bus: OpenBus) -> None:
    b = open_bus()
    for i in range(4):
        b.publish("contract.c", {"i": i})
    b.ack("reader", 3)
    b.ack("reader", 1)  # never backwards
    [info] = b.cursors()
    assert (info.consumer, info.last_seen_id, info.lag) == ("reader", 3, 1)
    with pytest.raises(BusError, match="last event id is 4"):
        b.ack("reader", 99)
    assert b.cursors()[0].last_seen_id == 3
    assert open_bus().cursors()[0].last_seen_id == 3  # committed, seen by another connection
    assert b.unregister("reader") == 3
    assert b.cursors() == []


def test_append_and_ack_commit_together_or_not_at_all(open_bus: OpenBus) -> None:
    b, other = open_bus(), open_bus()
    trigger = b.publish("contract.in", {"n": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with b.transaction() as tx:
            tx.publish("contract.out", {"n": 1}, agent="worker")
            tx.ack("worker", trigger)
            raise RuntimeError("boom")
    assert [e.id for e in other.events()] == [trigger]
    assert other.cursors() == []
    with b.transaction() as tx:
        out = tx.publish("contract.out", {"n": 1}, agent="worker")
        tx.ack("worker", trigger)
    assert [e.id for e in other.events()] == [trigger, out]
    assert [(c.consumer, c.last_seen_id) for c in other.cursors()] == [("worker", trigger)]


def test_append_with_ack(open_bus: OpenBus) -> None:
    b = open_bus()
    trigger = b.publish("contract.in", {"n": 1})
    ids = b.append([{"event_type": "contract.out", "payload": {"n": 2}}], ack=("app", trigger))
    assert [e.id for e in b.events()] == [trigger, *ids]
    assert [(c.consumer, c.last_seen_id) for c in b.cursors()] == [("app", trigger)]
    with pytest.raises(BusError, match="last event id"):
        b.append([{"event_type": "contract.out", "payload": {"n": 3}}], ack=("app", 999))
    assert len(b.events()) == 2  # the failed ack took its event with it


def test_lease_is_exclusive_and_freed_when_its_holder_is_killed(
    open_bus: OpenBus, spawn_writer: Callable[..., Any]
) -> None:
    a, b = open_bus(), open_bus()
    lease = a.lease("agent#0/2")
    with pytest.raises(LeaseHeld, match=rf"agent#0/2 is already running .*pid {os.getpid()}"):
        b.lease("agent#0/2")
    assert json.loads(b.lease_holder("agent#0/2"))["pid"] == os.getpid()
    b.lease("agent#1/2").release()  # another name is another lease
    lease.release()
    assert b.lease_holder("agent#0/2") is None
    b.lease("agent#0/2").release()

    proc = spawn_writer("agent#1/2", 0, "lease_proc.py")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=f"pid {proc.pid}"):
            a.lease("agent#1/2")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 5
    while True:  # the server notices the dead connection within moments
        try:
            a.lease("agent#1/2").release()
            break
        except LeaseHeld:
            assert time.monotonic() < deadline, "a SIGKILLed holder kept its lease"
            time.sleep(0.05)


def test_subscriber_wakes_for_another_connections_commit(open_bus: OpenBus) -> None:
    sub_bus, pub_bus = open_bus(), open_bus()
    first = pub_bus.publish("contract.w", {"n": 0})
    it = sub_bus.subscribe("waker", ["contract.*"], timeout=5)
    assert next(it).id == first
    sub_bus.ack("waker", first)
    timer = threading.Timer(0.3, lambda: pub_bus.publish("contract.w", {"n": 1}))
    timer.start()
    started = time.monotonic()
    event = next(it)
    assert event.payload == {"n": 1}
    assert time.monotonic() - started < 3  # a wake-up or the safety poll, not the timeout
    timer.join()


def test_open_runs(open_bus: OpenBus) -> None:
    b = open_bus()
    for run in ("r1", "r2", "r3"):
        b.publish("run.task", {"task": run}, agent="x", run_id=run)
    b.publish("run.task", {"task": "other"}, agent="y", run_id="r4")
    b.publish("run.outcome", {"outcome": "done"}, agent="x", run_id="r2")
    assert b.unfinished_runs("x") == ["r1", "r3"]
    assert b.unfinished_runs("y") == ["r4"]


# --------------------------------------------------------------------------- retention


def test_prune_deletes_only_what_every_consumer_acked(open_bus: OpenBus) -> None:
    b = open_bus()
    ids = [b.publish("contract.r", {"i": i}) for i in range(5)]
    assert b.prune().deleted == 0  # no consumer: nothing acknowledged
    b.ack("fast", ids[4])
    b.ack("slow", ids[1])
    report = b.prune(dry_run=True)
    assert (report.deleted, report.dry_run, report.slowest_consumer) == (2, True, "slow")
    assert len(b.events()) == 5
    report = b.prune()
    assert (report.deleted, report.up_to_id) == (2, ids[1])
    assert [e.id for e in b.events()] == ids[2:]
    with pytest.warns(PruneWarning, match="'slow'"):
        report = b.prune(max_age_s=0)  # everything is older than 0 s, even unacknowledged
    assert report.deleted == 3 and report.overtaken == ["slow"]
    assert b.events() == [] and b.last_id() == ids[4]


# --------------------------------------------------------------------------- payloads


def test_payload_limits_and_bad_events_write_nothing(open_bus: OpenBus) -> None:
    b = open_bus(max_payload_bytes=100)
    kept = b.publish("contract.p", {"x": "y" * 50})
    with pytest.raises(PayloadTooLarge):
        b.publish("contract.p", {"x": "y" * 200})
    with pytest.raises(PayloadTooLarge):
        b.publish_many(
            [
                {"event_type": "contract.p", "payload": {"ok": 1}},
                {"event_type": "contract.p", "payload": "z" * 300},
            ]
        )
    with pytest.raises(InvalidPayload):
        b.publish("contract.p", {"x": float("nan")})
    with pytest.raises(InvalidEventType):
        b.publish("Not A Type", {})
    assert [e.id for e in b.events()] == [kept]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"]), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(blacklist_categories=["Cs"]), max_size=8), inner)
    ),
    max_leaves=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=_JSON, run_id=st.none() | st.text(min_size=1, max_size=16).filter(str.isprintable))
def test_payload_round_trip(one_bus: Any, payload: Any, run_id: str | None) -> None:
    # one_bus is the same connection for every example (a function-scoped fixture).
    event_id = one_bus.publish("contract.rt", payload, agent="rt", run_id=run_id)
    got = one_bus.get(event_id)
    assert got is not None
    assert got.payload == json.loads(json.dumps(payload))
    assert (got.run_id, got.agent, got.event_type) == (run_id, "rt", "contract.rt")


# --------------------------------------------------------------------------- read-only SQL


def test_read_only_sql(open_bus: OpenBus, target: str) -> None:
    b = open_bus()
    b.publish("contract.q", {"n": 1})
    b.ack("q", 1)
    result = bus.query(target, "SELECT count(*) AS n FROM outbox")
    assert result.columns == ["n"] and result.rows == [(1,)]
    lag = bus.query(target, "SELECT consumer, last_seen_id, lag FROM consumer_lag")
    assert lag.rows == [("q", 1, 0)]
    for statement in (
        "DELETE FROM outbox",
        "UPDATE cursors SET last_seen_id = 0",
        "DROP TABLE outbox",
    ):
        with pytest.raises(ReadOnlyViolation):
            bus.query(target, statement)
    with pytest.raises(BusError):
        bus.query(target, "SELECT 1; DELETE FROM outbox")
    forever = (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    )
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        bus.query(target, forever, timeout_s=0.3)
    assert time.monotonic() - started < 5
    assert b.query("SELECT event_type FROM outbox WHERE id = ?", (1,)).rows == [("contract.q",)]
    with pytest.raises(ReadOnlyViolation):
        b.query("DELETE FROM outbox")
    assert len(b.events()) == 1 and b.cursors()[0].last_seen_id == 1


def _plain(value: Any) -> Any:
    # SQLite's json_extract gives ints/floats where PostgreSQL's numeric gives Decimals.
    return float(value) if isinstance(value, int | float | Decimal) else value


def test_views_of_runs(open_bus: OpenBus, target: str) -> None:
    b = open_bus()
    settings = {"model": "tiny", "context_window": 1000, "budget": 0.5}
    b.publish("run.task", {"task": "sum", "settings": settings}, agent="a", run_id="r1")
    b.publish(
        "run.model_call",
        {"turn": 1, "prompt_tokens": 250, "completion_tokens": 5, "prefill_s": 0.5},
        agent="a",
        run_id="r1",
    )
    b.publish(
        "run.decision", {"turn": 1, "decision": {"action": "ReadFile"}}, agent="a", run_id="r1"
    )
    call = b.publish(
        "run.tool_call",
        {"turn": 1, "tool": "read_file", "args": {"path": "x"}},
        agent="a",
        run_id="r1",
    )
    b.publish("run.tool_result", {"result": "text"}, agent="a", run_id="r1", caused_by=call)
    b.publish(
        "run.outcome", {"kind": "failed", "turns": 1, "reason": "boom"}, agent="a", run_id="r1"
    )

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(_plain(v) for v in row) for row in bus.query(target, sql).rows]

    assert rows("SELECT run_id, agent, task, outcome, turns, detail, model FROM runs") == [
        ("r1", "a", "sum", "failed", 1.0, "boom", "tiny")
    ]
    assert rows("SELECT turn, prompt_tokens, model_s, context_fill, budget FROM model_calls") == [
        (1.0, 250.0, 0.5, 0.25, 0.5)
    ]
    assert rows("SELECT turn, action FROM decisions") == [(1.0, "ReadFile")]
    assert rows("SELECT tool, args, status, result, result_id FROM tool_calls") == [
        ("read_file", '{"path":"x"}', "ok", "text", float(call + 1))
    ]
    assert rows("SELECT run_id, kind, error FROM errors") == [("r1", "outcome.failed", "boom")]
