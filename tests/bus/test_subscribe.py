"""Subscriptions: cursor start, globs, batches, waiting, in-process wake-up, SyncBus."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopbus.bus import Bus, Event, SyncBus
from loopbus.bus.errors import BusError


async def _take(iterator: object, n: int, timeout: float = 5.0) -> list[Event]:
    out: list[Event] = []

    async def run() -> None:
        async for event in iterator:  # type: ignore[attr-defined]
            out.append(event)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def test_subscribe_starts_after_committed_cursor(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        for i in range(10):
            await bus.publish("n", i)
        events = await _take(bus.subscribe("c"), 4)
        assert [e.id for e in events] == [1, 2, 3, 4]
        # subscribe does not move the cursor ...
        assert [e.id for e in await _take(bus.subscribe("c"), 1)] == [1]
        # ... ack does, and a new subscription resumes after it.
        await bus.ack("c", 4)
        assert [e.id for e in await _take(bus.subscribe("c"), 6)] == list(range(5, 11))
    async with Bus.connect(bus_path) as bus:  # the cursor is in the file
        assert [e.id for e in await _take(bus.subscribe("c"), 1)] == [5]


async def test_globs_filter_types(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        for event_type in ["file.found", "finding", "file.gone", "run.decision", "files"]:
            await bus.publish(event_type, {})
        got = await _take(bus.subscribe("g", ["file.*"]), 2)
        assert [e.event_type for e in got] == ["file.found", "file.gone"]
        got = await _take(bus.subscribe("h", ["finding", "run.*"]), 2)
        assert [e.event_type for e in got] == ["finding", "run.decision"]
        got = await _take(bus.subscribe("i", "fil?s"), 1)
        assert [e.event_type for e in got] == ["files"]
        got = await _take(bus.subscribe("j", ["file[!.]"]), 1)
        assert [e.event_type for e in got] == ["files"]
        assert len(await _take(bus.subscribe("k", "*"), 5)) == 5
        assert [e.event_type for e in await bus.events(types=["f*.g*"])] == ["file.gone"]
        with pytest.raises(BusError):
            bus.subscribe("bad", [""])


async def test_subscriber_wakes_on_local_publish(bus_path: Path) -> None:
    async with Bus.connect(bus_path, safety_poll_s=30) as bus:
        iterator = bus.subscribe("w", ["late.*"], batch_size=3)
        waiter = asyncio.ensure_future(_take(iterator, 5, timeout=10))
        await asyncio.sleep(0.1)
        await bus.publish("other", 0)  # filtered out, still wakes and rescans
        started = time.monotonic()
        await bus.publish_many([{"event_type": "late.x", "payload": i} for i in range(5)])
        events = await waiter
        assert time.monotonic() - started < 5  # far below the 30 s safety poll
        assert [e.payload for e in events] == [0, 1, 2, 3, 4]


async def test_two_buses_in_one_process_wake_each_other(bus_path: Path) -> None:
    async with (
        Bus.connect(bus_path, safety_poll_s=30) as reader,
        Bus.connect(bus_path) as writer,
    ):
        waiter = asyncio.ensure_future(_take(reader.subscribe("x"), 1, timeout=10))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await writer.publish("ping", 1)
        assert [e.event_type for e in await waiter] == ["ping"]
        assert time.monotonic() - started < 5


def test_sync_subscribe_iterator_with_timeout(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        for i in range(7):
            bus.publish("s", i)
        started = time.monotonic()
        got = [e.payload for e in bus.subscribe("sync", ["s"], timeout=0.2, batch_size=3)]
        assert got == list(range(7))
        assert 0.15 < time.monotonic() - started < 3
        bus.ack("sync", 7)
        assert list(bus.subscribe("sync", ["s"], timeout=0.05)) == []


def test_sync_subscribe_can_stop_early(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        bus.publish_many([{"event_type": "s", "payload": i} for i in range(3)])
        for event in bus.subscribe("early", timeout=1):
            assert event.id == 1
            break
        assert bus.publish("s", 4) == 4


async def test_follow_needs_no_consumer_and_writes_nothing(
    bus_path: Path, bh: SimpleNamespace
) -> None:
    async with Bus.connect(bus_path, safety_poll_s=30) as bus:
        for i in range(3):
            await bus.publish("f.x", i)
        before = bh.file_state(bus_path)
        got = await _take(bus.follow(since_id=1, types=["f.*"]), 2)
        assert [e.id for e in got] == [2, 3]
        assert bh.file_state(bus_path) == before
        assert await bus.cursors() == []
        waiter = asyncio.ensure_future(_take(bus.follow(since_id=3), 1))
        await asyncio.sleep(0.05)
        await bus.publish("f.y", 4)
        assert [e.id for e in await waiter] == [4]


def test_sync_follow(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        bus.publish_many([{"event_type": "s", "payload": i} for i in range(4)])
        assert [e.id for e in bus.follow(since_id=2, timeout=0.1)] == [3, 4]
        assert bus.cursors() == []


async def test_read_ahead_keeps_order_across_acks_publishes_and_filters(bus_path: Path) -> None:
    # Full batches make the subscription read ahead (started by the writer before its next
    # commit); what the consumer sees must be exactly the events in order, with nothing
    # skipped when new events arrive between batches or when it stops and resumes.
    async with Bus.connect(bus_path) as bus:
        await bus.publish_many(
            {"event_type": "a" if i % 3 else "b", "payload": i} for i in range(95)
        )
        seen: list[int] = []
        async for event in bus.subscribe("c", batch_size=10):
            seen.append(event.id)
            if len(seen) % 10 == 0:
                await bus.ack("c", event.id)
                await bus.publish("a", len(seen))  # a commit while a read-ahead is pending
            if len(seen) == 50:
                break
        assert seen == list(range(1, 51))
        # A new subscription resumes after the committed cursor (50) and sees the later ones.
        rest = await _take(bus.subscribe("c", batch_size=10), 95 + 5 - 50)
        assert [e.id for e in rest] == list(range(51, 101))
        # With a type filter, a read-ahead moves over non-matching events correctly.
        only_b = await _take(bus.subscribe("d", "b", batch_size=4), 32)
        assert [e.payload for e in only_b] == list(range(0, 95, 3))
        assert all(e.event_type == "b" for e in only_b)
        # The batch-level API delivers the same events.
        sub = await bus.open_subscription(None, batch_size=7, since_id=90)
        got: list[int] = []
        while len(got) < 10:
            got += [e.id for e in await sub.next_batch(1.0)]
        assert got == list(range(91, 101))
