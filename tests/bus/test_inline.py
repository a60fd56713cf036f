"""The async bus's fast path: lone writes commit on the loop thread (bus/sqlite/inline.py)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from loopbus.bus import Bus
from loopbus.bus.errors import BusClosed, BusError
from loopbus.bus.sqlite import inline


@pytest.fixture(autouse=True)
def _fast_disk_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count which path each commit took: a slow disk (a loaded CI machine) must
    not turn the fast path off under them. test_slow_commits_... sets its own threshold."""
    monkeypatch.setattr(inline, "SLOW_COMMIT_S", 60.0)


async def _ticker(stop: asyncio.Event) -> int:
    ticks = 0
    while not stop.is_set():
        ticks += 1
        await asyncio.sleep(0)
    return ticks


async def _cursor(bus: Bus, consumer: str) -> int:
    return next(c.last_seen_id for c in await bus.cursors() if c.consumer == consumer)


async def test_lone_writes_commit_on_the_loop_thread(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        ids = [await bus.publish("a.b", {"i": i}) for i in range(20)]
        await bus.publish_many(
            [{"event_type": "c", "payload": 1}, {"event_type": "c", "payload": 2}]
        )
        await bus.ack("me", ids[-1])
        assert bus.stats.batches == 0  # nothing went to the writer thread
        assert bus.stats.transactions == 22
        assert bus.stats.events == 22
        assert ids == list(range(1, 21))
        assert await _cursor(bus, "me") == 20
        with pytest.raises(BusError, match="last event id is 22"):
            await bus.ack("me", 23)  # the fast path hands back errors like the writer thread
        assert await _cursor(bus, "me") == 20


async def test_concurrent_writes_still_share_a_commit(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        await bus.publish("warm", 0)
        ids = await asyncio.gather(*(bus.publish("a", i) for i in range(50)))
        assert sorted(ids) == list(range(2, 52))
        assert bus.stats.largest_batch == 50
        assert bus.stats.transactions == 2


async def test_a_locked_bus_never_blocks_the_loop(bus_path: Path) -> None:
    """Another writer holds the lock: the publish waits on the writer thread, the loop runs."""
    async with Bus.connect(bus_path) as bus:
        await bus.publish("warm", 0)
        other = sqlite3.connect(bus_path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, other.execute, ("COMMIT",)).start()
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(stop))
        started = time.monotonic()
        event_id = await bus.publish("a", 1)
        waited = time.monotonic() - started
        stop.set()
        ticks = await ticker
        other.close()
        assert event_id == 2
        assert waited >= 0.25
        assert bus.stats.batches == 1
        assert ticks > 1000  # the loop kept turning while the publish waited


async def test_a_lone_publisher_lets_other_tasks_run(bus_path: Path) -> None:
    async with Bus.connect(bus_path, synchronous="NORMAL") as bus:
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(stop))
        for i in range(100):
            await bus.publish("a", i)
        stop.set()
        assert await ticker >= 100  # at least one turn per publish
        assert bus.stats.batches == 0


async def test_a_tight_publish_loop_still_lets_timers_run(
    bus_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else is ready, so writes skip the loop's turn, but only for a time slice."""
    # No checkpoint (their writes wait on the writer thread, a turn of the loop) in this test.
    monkeypatch.setattr(inline, "CHECKPOINT_PAGES", 10**9)
    async with Bus.connect(bus_path, synchronous="NORMAL") as bus:
        wakeups = 0

        async def timer() -> None:
            nonlocal wakeups
            while True:
                await asyncio.sleep(0.005)
                wakeups += 1

        task = asyncio.create_task(timer())
        await asyncio.sleep(0)  # the timer is now waiting on the clock, not ready
        started = time.monotonic()
        turns_before = bus._turned_at
        while time.monotonic() - started < 0.3:
            await bus.publish("a", 1)
        task.cancel()
        assert bus._turned_at > turns_before  # the publisher did give the loop turns
        assert wakeups >= 20  # ~50 with turns every 2 ms; 0 if the writes never gave one
        assert bus.stats.batches == 0


async def test_slow_commits_turn_the_fast_path_off(
    bus_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline, "SLOW_COMMIT_S", 0.0)
    async with Bus.connect(bus_path) as b:
        await b.publish("a", 1)  # on the loop thread, found slow
        assert b.stats.batches == 0
        await b.publish("a", 2)
        await b.publish("a", 3)
        assert b.stats.batches == 2  # backing off: the writer thread
        monkeypatch.setattr(inline, "BACKOFF_S", 0.0)
        b._inline._off_until = time.monotonic()  # the back-off is over: probe again
        await b.publish("a", 4)
        assert b.stats.batches == 2
        assert await b.last_id() == 4


async def test_the_wal_stays_bounded(bus_path: Path) -> None:
    """The fast path never checkpoints itself; the writer thread does it for it. Without that
    the WAL would grow by ~12 KiB per commit (~30 MiB here) and every fsync gets slower."""
    async with Bus.connect(bus_path, synchronous="NORMAL") as bus:
        for i in range(2500):
            await bus.publish("a", {"i": i})
        assert bus.stats.batches == 0
        wal = os.path.getsize(f"{bus_path}-wal")
    assert wal < 3 * inline.CHECKPOINT_PAGES * 4096


async def test_cancelled_before_commit_writes_nothing(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        task = asyncio.create_task(bus.publish("a", 1))
        await asyncio.sleep(0)  # it is now deciding whether it is alone
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await bus.publish("b", 2) == 1
        assert [e.event_type for e in await bus.events()] == ["b"]


async def test_close_waits_for_a_deciding_write(bus_path: Path) -> None:
    bus = await Bus.open(bus_path)
    task = asyncio.create_task(bus.publish("a", 1))
    await asyncio.sleep(0)
    await bus.close()
    assert await task == 1
    with pytest.raises(BusClosed):
        await bus.publish("a", 2)
    async with Bus.connect(bus_path) as again:
        assert await again.last_id() == 1


async def test_an_interrupted_commit_releases_the_write_lock(bus_path: Path) -> None:
    async with Bus.connect(bus_path) as bus:
        await bus.publish("a", 1)

        def interrupt() -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            bus._inline.commit((0, ("cli", "b", "2", None, None)), interrupt)
        assert not bus._inline.connection().in_transaction
        started = time.monotonic()
        assert await bus.publish("c", 3) == 2  # the insert of "b" was rolled back
        assert time.monotonic() - started < 1
        assert [e.event_type for e in await bus.events()] == ["a", "c"]


@pytest.mark.parametrize("seed", range(4))
async def test_mixed_writers_lose_and_duplicate_nothing(
    bus_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Lone and concurrent publishes, transactions, acks and prunes, frequent checkpoints and
    another process-like writer holding the lock now and then: every publish that returned an
    id is stored once, with its payload, and nothing else is."""
    import random

    rng = random.Random(seed)
    monkeypatch.setattr(inline, "CHECKPOINT_PAGES", 20)  # a checkpoint every few commits
    published: dict[int, dict[str, int]] = {}
    async with Bus.connect(bus_path, synchronous="NORMAL") as bus:

        def hold_lock(seconds: float) -> None:
            other = sqlite3.connect(bus_path, isolation_level=None, timeout=10)
            other.execute("BEGIN IMMEDIATE")
            time.sleep(seconds)
            other.execute("COMMIT")
            other.close()

        async def worker(w: int) -> None:
            for i in range(40):
                payload = {"w": w, "i": i}
                roll = rng.random()
                if roll < 0.45:
                    published[await bus.publish("mix.one", payload)] = payload
                elif roll < 0.6:
                    pair = [dict(payload, k=0), dict(payload, k=1)]
                    ids = await bus.publish_many(
                        [{"event_type": "mix.many", "payload": p} for p in pair]
                    )
                    published.update(zip(ids, pair, strict=True))
                elif roll < 0.72:
                    async with bus.transaction() as tx:
                        published[await tx.publish("mix.tx", payload)] = payload
                        await tx.ack(f"c{w}", max(published))
                elif roll < 0.84 and published:
                    await bus.ack(f"c{w}", rng.choice(list(published)))
                elif roll < 0.9:
                    await asyncio.to_thread(hold_lock, rng.uniform(0.001, 0.01))
                elif roll < 0.93:
                    await bus.prune(dry_run=True)
                else:
                    await asyncio.sleep(rng.choice([0, 0.001]))

        await asyncio.gather(*(worker(w) for w in range(6)))
        stored = {e.id: e.payload for e in await bus.events()}
    assert stored == published
    assert len(published) > 100


async def test_a_prune_queued_behind_a_transaction_runs_after_a_lone_inline_write(
    bus_path: Path,
) -> None:
    """A transaction ends with one publish and one prune queued behind it: the publish commits
    on the fast path, and the prune must still be woken (it once waited forever)."""
    async with Bus.connect(bus_path) as bus:
        go = asyncio.Event()

        async def publish() -> int:
            await go.wait()
            return await bus.publish("a.b", 1)

        async def prune() -> None:
            await go.wait()
            await asyncio.sleep(0)  # queue behind the publish
            await bus.prune(dry_run=True)

        tasks = [asyncio.create_task(publish()), asyncio.create_task(prune())]
        async with bus.transaction() as tx:
            await tx.publish("a.b", 0)
            go.set()
            for _ in range(5):  # both are now waiting for the transaction
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert [e.payload for e in await bus.events()] == [0, 1]
