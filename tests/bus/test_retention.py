"""Retention: prune never passes the slowest cursor; ids are never reused."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopbus.bus import Bus
from loopbus.bus.errors import PruneWarning


async def test_prune_stops_at_the_slowest_cursor(bus_path: Path, bh: SimpleNamespace) -> None:
    async with Bus.connect(bus_path) as bus:
        for i in range(20):
            await bus.publish("e", i)
        # No registered consumer: nothing is acknowledged, nothing goes.
        report = await bus.prune()
        assert report.deleted == 0 and report.slowest_consumer is None
        await bus.ack("fast", 15)
        await bus.ack("slow", 6)
        dry = await bus.prune(dry_run=True)
        assert (dry.deleted, dry.up_to_id, dry.dry_run) == (6, 6, True)
        assert await bus.get(1) is not None
        report = await bus.prune()
        assert (report.deleted, report.up_to_id, report.slowest_consumer) == (6, 6, "slow")
        assert report.overtaken == []
        remaining = [e.id for e in await bus.events()]
        assert remaining == list(range(7, 21))
        # A subscriber registered (even before acking) holds events back too.
        async for _ in bus.subscribe("newcomer"):
            break
        await bus.ack("slow", 20)
        await bus.ack("fast", 20)
        assert (await bus.prune()).deleted == 0  # newcomer's cursor is 0
    assert bh.raw_rows(bus_path, "SELECT min(id) FROM outbox") == [(7,)]


async def test_ids_are_never_reused_after_prune(bus_path: Path, bh: SimpleNamespace) -> None:
    async with Bus.connect(bus_path) as bus:
        for i in range(5):
            await bus.publish("e", i)
        await bus.ack("only", 5)
        assert (await bus.prune()).deleted == 5
        assert await bus.events() == []
        assert await bus.last_id() == 5
        assert await bus.publish("e", "after") == 6
    # Also across a reopen and a VACUUM: the sequence lives in sqlite_sequence.
    conn = sqlite3.connect(bus_path, isolation_level=None)
    conn.execute("DELETE FROM outbox")
    conn.execute("VACUUM")
    conn.close()
    async with Bus.connect(bus_path) as bus:
        assert await bus.publish("e", "later") == 7


async def test_max_age_prune_warns_about_overtaken_consumers(
    bus_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Bus.connect(bus_path) as bus:
        for i in range(4):
            await bus.publish("e", i)
        await bus.ack("laggard", 1)
        await bus.ack("current", 4)
        with pytest.warns(PruneWarning, match="laggard.*never see them"):
            report = await bus.prune(max_age_s=0)
        assert report.deleted == 4
        assert report.overtaken == ["laggard"]
        assert any("laggard" in w for w in report.warnings)
        assert any("laggard" in r.getMessage() for r in caplog.records)
        # A young max age deletes nothing beyond the cursors.
        await bus.publish("e", 5)
        assert (await bus.prune(max_age_s=3600)).deleted == 0
