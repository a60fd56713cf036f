"""Consumers that filter (by type or id partition) commit past what they skip.

Without it a selective consumer's cursor stays at its last matching event: it shows a lag of
every later event while fully caught up, and prune can never pass it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from loopbus.bus import Bus, SyncBus


def _cursor(bus: SyncBus, consumer: str) -> tuple[int, int]:
    info = {c.consumer: c for c in bus.cursors()}[consumer]
    return info.last_seen_id, info.lag


def test_an_idle_filtered_consumer_reaches_lag_zero_and_lets_prune_pass(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        for i in range(10):
            bus.publish("noise", i)
        wanted = bus.publish("scan.request", {})
        for i in range(10):
            bus.publish("noise", i)
        got = []
        for event in bus.subscribe("scanner", ["scan.request"], timeout=0.2):
            got.append(event.id)
            bus.ack("scanner", event.id)
        assert got == [wanted]
        assert _cursor(bus, "scanner") == (21, 0)
        assert bus.prune().deleted == 21
        # Nothing matches at all: the cursor still follows the head.
        for i in range(5):
            bus.publish("noise", i)
        assert list(bus.subscribe("scanner", ["scan.request"], timeout=0.2)) == []
        assert _cursor(bus, "scanner") == (26, 0)


def test_the_cursor_never_passes_a_delivered_event_that_is_not_acked(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        a = bus.publish("scan.request", 1)
        b = bus.publish("scan.request", 2)
        for i in range(5):
            bus.publish("noise", i)
        assert [e.id for e in bus.subscribe("s", ["scan.request"], timeout=0.2)] == [a, b]
        assert _cursor(bus, "s") == (0, 7)  # nothing acked: nothing moves
        seen = [e.id for e in bus.subscribe("s", ["scan.request"], timeout=0.2)]
        assert seen == [a, b]  # redelivered (at-least-once)
        bus.ack("s", a)
        assert _cursor(bus, "s")[0] == a
        seen = []
        for event in bus.subscribe("s", ["scan.request"], timeout=0.2):
            seen.append(event.id)  # b: delivered, never acked
        assert seen == [b]
        assert _cursor(bus, "s")[0] == a
        for event in bus.subscribe("s", ["scan.request"], timeout=0.2):
            bus.ack("s", event.id)
        assert _cursor(bus, "s") == (7, 0)


def test_an_ack_in_a_transaction_lets_the_cursor_advance(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        first = bus.publish("job", 1)
        bus.publish("noise", 1)
        for event in bus.subscribe("j", ["job"], timeout=0.2):
            with bus.transaction() as tx:
                tx.publish("job.done", {"of": event.id})
                tx.ack("j", event.id)
        assert first == 1
        assert _cursor(bus, "j") == (3, 0)


def test_a_partition_skips_other_ids_and_commits_past_them(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        ids = [bus.publish("file.found", i) for i in range(7)]
        bus.publish("other", 0)
        for index in (0, 1):
            consumer = f"w#{index}/2"
            got = []
            for event in bus.subscribe(consumer, ["file.*"], timeout=0.2, partition=(index, 2)):
                got.append(event.id)
                bus.ack(consumer, event.id)
            assert got == [i for i in ids if i % 2 == index]
            assert _cursor(bus, consumer) == (8, 0)
        assert bus.prune().deleted == 8


async def test_the_async_iterator_commits_past_skipped_events_while_waiting(
    bus_path: Path,
) -> None:
    async with Bus.connect(bus_path) as bus:
        wanted = await bus.publish("scan.request", {})
        iterator = bus.subscribe("scanner", "scan.request")
        event = await asyncio.wait_for(iterator.__anext__(), 5)
        assert event.id == wanted
        await bus.ack("scanner", event.id)
        for i in range(30):
            await bus.publish("noise", i)
        waiting = asyncio.ensure_future(iterator.__anext__())
        for _ in range(200):
            [info] = await bus.cursors()
            if info.lag == 0:
                break
            await asyncio.sleep(0.01)
        assert (info.last_seen_id, info.lag) == (31, 0)
        later = await bus.publish("scan.request", {})
        assert (await asyncio.wait_for(waiting, 5)).id == later
