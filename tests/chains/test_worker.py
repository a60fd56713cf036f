"""One agent process's protocol, in process: routing, partitions, cursor, resume, dedupe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chain_helpers import make_workspace, write_chain

from loopbus.agents.chains.config import load_config
from loopbus.agents.chains.worker import AgentWorker
from loopbus.bus import SyncBus

CHECKER = """
[agents.checker]
subscribe = ["file.*"]
task = "Check {payload[path]}"
max_turns = 1
budget = 1.0
emit = "review.done"
parallelism = 2
"""


class Crash(Exception):
    """Stands in for the process dying right after a given run event was committed."""


class CrashingWorker(AgentWorker):
    def __init__(self, *args: Any, crash_after: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash_after = crash_after

    def _on_event(self, event: Any) -> None:
        super()._on_event(event)
        if event.event_type == self.crash_after:
            raise Crash(event.event_type)


class CountingRuntime:
    """The real runtime, counting the model calls made through it."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._runtime.generate(*args, **kwargs)


@pytest.fixture
def chain(tmp_path: Path, tiny_model_path: Path) -> Any:
    ws = make_workspace(tmp_path / "ws", 4)
    cfg = write_chain(
        tmp_path / "chain.toml",
        CHECKER,
        model=tiny_model_path,
        workspace=ws,
        output=tmp_path / "out",
    )
    return load_config(cfg)


def cursor(bus: SyncBus, consumer: str) -> int:
    return {c.consumer: c.last_seen_id for c in bus.cursors()}.get(consumer, 0)


def publish_files(bus: SyncBus, n: int) -> list[int]:
    return [
        bus.publish("file.found", {"path": f"mod{i:02d}.py", "scan": 1, "total": n})
        for i in range(n)
    ]


def test_routes_only_matching_events_and_partitions_by_id(
    chain: Any, bus_file: Path, tiny_runtime: Any, tmp_path: Path
) -> None:
    with SyncBus(bus_file) as bus:
        ids = publish_files(bus, 4)
        noise = [bus.publish("finding", {"path": "x"}), bus.publish("filefound", {})]
        ids.append(bus.publish("file.renamed", {"path": "mod03.py"}))
        for index in (0, 1):
            worker = AgentWorker(chain, "checker", bus, runtime=tiny_runtime, index=index)
            handled = worker.serve(idle_exit=0.3, poll=0.1)
            assert handled == len([i for i in ids if i % 2 == index])
            # every matching event is behind the cursor, owned or not; idle, the cursor
            # also passes what the agent does not subscribe to (its own run events)
            assert cursor(bus, f"checker#{index}/2") >= ids[-1]
            assert {c.consumer: c.lag for c in bus.cursors()}[f"checker#{index}/2"] == 0
        triggers = sorted(e.caused_by for e in bus.events(types=["run.task"]))
        assert triggers == ids
        assert not set(noise) & set(triggers)
        runs = {e.run_id for e in bus.events(types=["run.outcome"])}
        assert runs == {f"checker-e{i}" for i in ids}


def test_cursor_stays_before_an_unfinished_run_and_resume_does_not_reask(
    chain: Any, bus_file: Path, tiny_runtime: Any, tmp_path: Path
) -> None:
    with SyncBus(bus_file) as bus:
        [first] = publish_files(bus, 1)
        worker = CrashingWorker(
            chain, "checker", bus, runtime=tiny_runtime, index=first % 2, crash_after="run.decision"
        )
        with pytest.raises(Crash):
            worker.serve(idle_exit=0.3, poll=0.1)
        run_id = f"checker-e{first}"
        assert bus.events(run_id=run_id, types=["run.decision"])
        assert not bus.events(run_id=run_id, types=["run.outcome"])
        assert cursor(bus, worker.consumer) < first  # not acked: the run is unfinished

        counting = CountingRuntime(tiny_runtime)
        again = AgentWorker(chain, "checker", bus, runtime=counting, index=first % 2)
        assert again.resume_unfinished() == 1
        assert counting.calls == 0  # the recorded decision was executed, not asked again
        assert again.serve(idle_exit=0.3, poll=0.1) == 1  # redelivered: outcome found, acked
        assert counting.calls == 0
        assert cursor(bus, again.consumer) >= first  # idle: past skipped events too
        assert len(bus.events(run_id=run_id, types=["run.model_call"])) == 1
        assert len(bus.events(run_id=run_id, types=["run.tool_result"])) == 1
        assert len(bus.events(run_id=run_id, types=["run.outcome"])) == 1
        assert len(bus.events(types=["review.done"])) == 1


def test_crash_between_outcome_and_ack_publishes_nothing_twice(
    chain: Any, bus_file: Path, tiny_runtime: Any, tmp_path: Path
) -> None:
    with SyncBus(bus_file) as bus:
        [first] = publish_files(bus, 1)
        worker = CrashingWorker(
            chain, "checker", bus, runtime=tiny_runtime, index=first % 2, crash_after="run.outcome"
        )
        with pytest.raises(Crash):
            worker.serve(idle_exit=0.3, poll=0.1)
        assert cursor(bus, worker.consumer) < first
        assert not bus.events(types=["review.done"])
        counting = CountingRuntime(tiny_runtime)
        again = AgentWorker(chain, "checker", bus, runtime=counting, index=first % 2)
        assert again.serve(idle_exit=0.3, poll=0.1) == 1
        assert counting.calls == 0
        assert cursor(bus, again.consumer) >= first
        assert len(bus.events(types=["run.outcome"])) == 1
        [done] = bus.events(types=["review.done"])
        assert done.payload["trigger_id"] == first and done.payload["outcome"] == "max_turns"
        findings = bus.events(types=["finding"])
        assert {f.payload["kind"] for f in findings} == {"todo", "untested"}
        # a third delivery (say, a new consumer after a parallelism change) changes nothing
        third = AgentWorker(chain, "checker", bus, runtime=counting, index=0, count=1)
        assert third.serve(idle_exit=0.3, poll=0.1) == 1
        assert len(bus.events(types=["run.outcome"])) == 1
        assert len(bus.events(types=["review.done"])) == 1
        assert len(bus.events(types=["finding"])) == len(findings)
