"""The run query agents use on start: runs with a run.task and no run.outcome (migration 4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from loopbus.bus import SyncBus
from loopbus.bus.errors import BusError
from loopbus.bus.sqlite.sqlops import _UNFINISHED_RUNS


def test_unfinished_runs(bus_path: Path) -> None:
    with SyncBus(bus_path) as bus:
        for run_id, agent in [("a-1", "a"), ("b-1", "b"), ("a-2", "a"), ("a-3", "a")]:
            bus.publish("run.task", {"task": "t"}, agent=agent, run_id=run_id)
        bus.publish("run.outcome", {"kind": "done"}, agent="a", run_id="a-2")
        bus.publish("run.task", {"task": "t"}, agent="a")  # no run id: not a run
        bus.publish("other.thing", {}, agent="a", run_id="a-1")
        assert bus.unfinished_runs("a") == ["a-1", "a-3"]
        assert bus.unfinished_runs("b") == ["b-1"]
        assert bus.unfinished_runs("nobody") == []
        bus.publish("run.outcome", {"kind": "failed"}, agent="a", run_id="a-1")
        assert bus.unfinished_runs("a") == ["a-3"]
        with pytest.raises(BusError, match="invalid agent"):
            bus.unfinished_runs("")


def test_unfinished_runs_reads_only_the_partial_indexes(bus_path: Path) -> None:
    """No table scan: the query stays cheap on a bus with a long history."""
    with SyncBus(bus_path):
        pass
    conn = sqlite3.connect(bus_path)
    plan = " | ".join(
        row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {_UNFINISHED_RUNS}", ("a",))
    )
    conn.close()
    assert "USING COVERING INDEX outbox_run_tasks" in plan, plan
    assert "USING COVERING INDEX outbox_run_outcomes" in plan, plan
    assert "SCAN t" not in plan and "SCAN outbox" not in plan, plan
