"""Publishing: ids, publish_many, group commit, transactions, acks, rejected inputs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopbus.bus import Bus, NewEvent, SyncBus
from loopbus.bus.errors import (
    BusClosed,
    BusError,
    InvalidEvent,
    InvalidEventType,
    InvalidPayload,
    PayloadTooLarge,
)


async def test_publish_returns_ids_and_stores_events(bus_path: Path, bh: SimpleNamespace) -> None:
    async with Bus.connect(bus_path) as bus:
        first = await bus.publish("file.found", {"path": "a.py"}, agent="scanner", run_id="r1")
        second = await bus.publish("finding", [1, 2], caused_by=first)
        assert (first, second) == (1, 2)
        event = await bus.get(second)
        assert event is not None
        assert (event.event_type, event.payload, event.caused_by, event.agent) == (
            "finding",
            [1, 2],
            1,
            "cli",
        )
        assert await bus.get(99) is None
        assert await bus.last_id() == 2
        assert [e.id for e in await bus.events(types=["file.*"])] == [1]
        assert [e.id for e in await bus.events(run_id="r1")] == [1]
        assert [e.id for e in await bus.events(since_id=1)] == [2]
        assert [e.id for e in await bus.events(limit=1)] == [1]
    # Durable and visible to an independent connection, payload stored as JSON text.
    assert bh.raw_rows(bus_path, "SELECT id, payload, typeof(payload) FROM outbox") == [
        (1, '{"path":"a.py"}', "text"),
        (2, "[1,2]", "text"),
    ]


async def test_publish_many_is_one_transaction(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        before = bus.stats.transactions
        ids = await bus.publish_many(
            [NewEvent(event_type="a", payload=i) for i in range(50)]
            + [{"event_type": "b", "payload": "dict form", "agent": "x"}]
        )
        assert ids == list(range(1, 52))
        assert bus.stats.transactions == before + 1
        assert [e.payload for e in await bus.events(types="b")] == ["dict form"]
        # One invalid event: nothing of the batch is written.
        with pytest.raises(InvalidEventType):
            await bus.publish_many(
                [{"event_type": "ok", "payload": 1}, {"event_type": "Bad", "payload": 1}]
            )
        assert await bus.last_id() == 51
        assert await bus.publish_many([]) == []


BAD_CALLS = [
    (InvalidEventType, ("Bad.Type", {}), {}),
    (InvalidEventType, ("", {}), {}),
    (InvalidPayload, ("ok", float("nan")), {}),
    (InvalidPayload, ("ok", {"set": {1}}), {}),
    (PayloadTooLarge, ("ok", "x" * 2000), {}),
    (InvalidEvent, ("ok", 1), {"agent": ""}),
    (InvalidEvent, ("ok", 1), {"caused_by": -1}),
]


@pytest.mark.parametrize(("error", "args", "kwargs"), BAD_CALLS)
async def test_bad_inputs_raise_typed_errors_and_write_nothing(
    bus_path: Path, bh: SimpleNamespace, error: type[Exception], args: tuple, kwargs: dict
) -> None:
    async with Bus.connect(bus_path, max_payload_bytes=1000) as bus:
        await bus.publish("seed", 1)
        before = bh.file_state(bus_path)
        with pytest.raises(error) as info:
            await bus.publish(*args, **kwargs)
        assert isinstance(info.value, BusError) and str(info.value)
        with pytest.raises(error):
            await bus.publish_many([{"event_type": args[0], "payload": args[1], **kwargs}])
        with pytest.raises(error):
            async with bus.transaction() as tx:
                await tx.publish(*args, **kwargs)
        assert bh.file_state(bus_path) == before
        assert await bus.last_id() == 1
    assert bh.raw_rows(bus_path, "SELECT count(*) FROM outbox") == [(1,)]


async def test_group_commit_many_concurrent_publishers(bus_path: Path, bh: SimpleNamespace) -> None:
    async with Bus.connect(bus_path) as bus:
        publishers, each = 50, 20

        async def publisher(p: int) -> list[int]:
            ids = []
            for i in range(each):
                event_id = await bus.publish("load", {"p": p, "i": i})
                # Durable before publish returned: an independent connection sees it.
                ids.append(event_id)
            return ids

        results = await asyncio.gather(*(publisher(p) for p in range(publishers)))
        total = publishers * each
        all_ids = [i for ids in results for i in ids]
        assert sorted(all_ids) == list(range(1, total + 1))
        for ids in results:
            assert ids == sorted(ids)  # each publisher's events in its own order
        assert bus.stats.events == total
        # Shared transactions: far fewer commits (fsyncs) than events.
        assert bus.stats.transactions < total / 5
        assert bus.stats.largest_batch > 1
        rows = bh.raw_rows(bus_path, "SELECT id, payload FROM outbox ORDER BY id")
        assert len(rows) == total


async def test_each_publish_is_visible_when_it_returns(bus_path: Path, bh: SimpleNamespace) -> None:
    async with Bus.connect(bus_path) as bus:

        async def publish_and_check(i: int) -> None:
            event_id = await bus.publish("seen", i)
            rows = bh.raw_rows(bus_path, "SELECT payload FROM outbox WHERE id = ?", (event_id,))
            assert rows == [(str(i),)]

        await asyncio.gather(*(publish_and_check(i) for i in range(30)))


async def test_transaction_publish_and_ack_atomically(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        source = await bus.publish("task", {"n": 1})
        async with bus.transaction() as tx:
            result = await tx.publish("result", {"n": 2}, caused_by=source)
            more = await tx.publish_many([{"event_type": "result", "payload": 3}])
            await tx.ack("worker", source)
            # Not visible to readers before commit.
            assert await bus.last_id() == source
        assert more == [result + 1]
        assert [(c.consumer, c.last_seen_id) for c in await bus.cursors()] == [("worker", source)]
        assert [e.id for e in await bus.events(types="result")] == [result, result + 1]

        # An exception rolls back both the publish and the ack.
        with pytest.raises(RuntimeError):
            async with bus.transaction() as tx:
                await tx.publish("result", {"n": 4})
                await tx.ack("worker", result)
                raise RuntimeError("handler failed")
        assert await bus.last_id() == result + 1
        assert [c.last_seen_id for c in await bus.cursors()] == [source]
        # The writer is free again afterwards; the rolled-back id was never visible.
        assert await bus.publish("after", 1) == result + 2


async def test_publish_inside_transaction_is_refused(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        async with bus.transaction() as tx:
            with pytest.raises(BusError, match="tx.publish"):
                await bus.publish("a", 1)
            await tx.publish("a", 1)
        with pytest.raises(BusError, match="finished"):
            await tx.publish("a", 2)


async def test_transactions_and_group_commits_interleave(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:

        async def txn(i: int) -> int:
            async with bus.transaction() as tx:
                event_id = await tx.publish("tx", i)
                await asyncio.sleep(0)
                await tx.ack(f"c{i}", event_id)
                return event_id

        results = await asyncio.gather(
            *(txn(i) for i in range(10)), *(bus.publish("plain", i) for i in range(50))
        )
        assert sorted(results) == list(range(1, 61))
        assert len(await bus.cursors()) == 10


async def test_ack_moves_forward_only_and_checks_ids(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        for i in range(5):
            await bus.publish("a", i)
        await bus.ack("c", 4)
        await bus.ack("c", 2)  # late/duplicate ack: ignored
        assert [(c.last_seen_id, c.lag) for c in await bus.cursors()] == [(4, 1)]
        with pytest.raises(BusError, match="last event id is 5"):
            await bus.ack("c", 6)
        with pytest.raises(BusError):
            await bus.ack("", 1)
        assert [c.last_seen_id for c in await bus.cursors()] == [4]


async def test_closed_bus_refuses_work(bus_path: Path) -> None:
    bus = await Bus.open(bus_path)
    await bus.close()
    await bus.close()  # idempotent
    with pytest.raises(BusClosed):
        await bus.publish("a", 1)
    with pytest.raises(BusClosed):
        await bus.events()


def test_sync_bus_has_the_same_methods(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        first = bus.publish("a.b", {"x": 1})
        assert bus.publish_many([{"event_type": "a.c", "payload": 2}]) == [first + 1]
        with bus.transaction() as tx:
            third = tx.publish("a.d", 3)
            tx.ack("sync", third)
            with pytest.raises(BusError):
                bus.publish("a.e", 4)
        assert [e.id for e in bus.events(types="a.*")] == [1, 2, 3]
        assert bus.get(3).payload == 3  # type: ignore[union-attr]
        assert bus.last_id() == 3
        bus.ack("sync", 3)
        assert bus.cursors()[0].lag == 0
        assert bus.prune().deleted == 3
    with pytest.raises(BusClosed):
        bus.publish("a", 1)
