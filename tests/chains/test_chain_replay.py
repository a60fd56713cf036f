"""Record and replay of chain runs: tools that read the bus and their trigger replay from the
recording alone (`loopbus export` includes what they read), and a changed tool shows a diff."""

from __future__ import annotations

from dataclasses import replace as replace_field
from pathlib import Path
from typing import Any

import pytest
from chain_helpers import make_workspace, write_chain
from click.testing import CliRunner

from loopbus.agents.chains.config import load_config
from loopbus.agents.chains.worker import AgentWorker
from loopbus.agents.cli import main as loopbus
from loopbus.agents.examples import chain_agents
from loopbus.agents.run.replay import FORMAT_WITH_CONTEXT, Recording, export_run, replay
from loopbus.agents.testing import assert_replays
from loopbus.bus import SyncBus

CHAIN = """
[agents.scanner]
subscribe = ["scan.request"]
first_tool = "scan_files"
max_turns = 2
budget = 1.0

[agents.reviewer]
subscribe = ["file.found"]
task = "Review the file {payload[path]}."
first_tool = "check_file"
emit = "review.done"
max_turns = 1
budget = 1.0

[agents.reporter]
subscribe = ["review.done"]
task = "{payload[path]} was reviewed."
first_tool = "write_report"
max_turns = 2
budget = 1.0
"""


@pytest.fixture
def chain_bus(tmp_path: Path, tiny_model_path: Path, tiny_runtime: Any) -> Path:
    """A bus on which a real scanner -> reviewer -> reporter chain ran (tiny model)."""
    ws = make_workspace(tmp_path / "ws", 3)
    config = load_config(
        write_chain(
            tmp_path / "chain.toml",
            CHAIN,
            model=tiny_model_path,
            workspace=ws,
            output=tmp_path / "out",
        )
    )
    bus_file = tmp_path / "chain.db"
    with SyncBus(bus_file) as bus:
        bus.publish("scan.request", {})
        for name in ("scanner", "reviewer", "reporter"):
            AgentWorker(config, name, bus, runtime=tiny_runtime).serve(idle_exit=0.3, poll=0.1)
        assert len(bus.events(types=["review.done"])) == 4
    assert "4/4 files reviewed (complete)" in (tmp_path / "out" / "report.md").read_text()
    return bus_file


def _runs(bus_file: Path) -> dict[str, list[str]]:
    with SyncBus(bus_file) as bus:
        runs: dict[str, list[str]] = {}
        for task in bus.events(types=["run.task"]):
            runs.setdefault(task.agent, []).append(task.run_id)
    return runs


def test_exported_chain_runs_replay(chain_bus: Path, tmp_path: Path) -> None:
    runs = _runs(chain_bus)
    assert {agent: len(ids) for agent, ids in runs.items()} == {
        "scanner": 1,
        "reviewer": 4,
        "reporter": 4,
    }
    report = tmp_path / "out" / "report.md"
    report.unlink()
    with SyncBus(chain_bus) as bus:
        for run_ids in runs.values():
            for run_id in run_ids:
                path = tmp_path / f"{run_id}.xml"
                path.write_text(export_run(bus, run_id))
                result = assert_replays(path)  # no model, no chain process, no original bus
                assert result.outcome is not None and result.outcome.run_id == run_id
        scanner = Recording.from_bus(bus, runs["scanner"][0])
        reporter = Recording.from_bus(bus, runs["reporter"][-1])
    assert not report.exists()  # replayed reporters wrote into a scratch folder

    # The scanner's recording carries its trigger; the reporter's also what write_report read.
    assert [e.type for e in scanner.context] == ["scan.request"]
    read = {e.type for e in reporter.context}
    assert {"review.done", "file.found", "finding"} <= read
    assert all(e.run_id != reporter.run_id for e in reporter.context)
    text = reporter.to_xml()
    assert f'format="{FORMAT_WITH_CONTEXT}"' in text
    assert Recording.from_xml(text) == reporter  # the format round-trips
    # The worker's `emit` (after the outcome) is in the recording but not compared.
    reviewer = Recording.from_xml((tmp_path / f"{runs['reviewer'][0]}.xml").read_text())
    assert reviewer.events[-1].type == "review.done"
    assert reviewer.loop_events[-1].type == "run.outcome"


def test_cli_replays_a_chain_run_from_the_bus(chain_bus: Path) -> None:
    run_id = _runs(chain_bus)["reporter"][-1]
    result = CliRunner().invoke(loopbus, ["--bus", str(chain_bus), "replay", run_id])
    assert result.exit_code == 0, result.output
    assert f"replay of {run_id} matches" in result.output


@pytest.fixture
def changed_check_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def different(call: Any, ctx: Any) -> str:
        trigger = ctx.trigger()
        ctx.publish_many([("finding", {"path": trigger.payload["path"], "kind": "style"})])
        return chain_agents.check_file(call, ctx)

    bound = chain_agents.reviewer.tools["CheckFile"]
    monkeypatch.setitem(
        chain_agents.reviewer.tools, "CheckFile", replace_field(bound, handler=different)
    )


def test_changed_chain_tool_fails_with_a_diff(
    chain_bus: Path, tmp_path: Path, changed_check_file: None
) -> None:
    run_id = _runs(chain_bus)["reviewer"][0]
    with SyncBus(chain_bus) as bus:
        recording = Recording.from_bus(bus, run_id)
    report = replay(recording)
    assert not report.ok and report.diff is not None
    first = report.diff.splitlines()[0]
    assert first.startswith("replay diverged at event 5 of ") and "(finding)" in first
    assert '+    "kind": "style",' in report.diff


def test_recorded_reads_serve_the_bus_as_each_tool_saw_it() -> None:
    from loopbus.agents.run.replay import RecordedEvent
    from loopbus.agents.run.replay_context import RecordedReads
    from loopbus.bus import Event

    def recorded(kind: str, id_: int, run_id: str | None = None) -> RecordedEvent:
        return RecordedEvent(
            type=kind, ts="t", payload={"n": id_}, id=id_, agent="a", run_id=run_id
        )

    task = recorded("run.task", 3, "r")
    recording = Recording(
        run_id="r",
        events=[task, recorded("run.tool_call", 6, "r"), recorded("run.tool_result", 10, "r")],
        context=[recorded("file.found", 1), recorded("finding", 4, "x"), recorded("finding", 8)],
    )
    reads = RecordedReads(recording)

    def replayed(kind: str, scratch_id: int) -> Event:
        return Event(
            id=scratch_id, agent="a", event_type=kind, payload={}, run_id="r", created_at="t"
        )

    reads.add(replayed("run.task", 1), recording.events[0])
    reads.add(replayed("run.tool_call", 2), recording.events[1])
    # when the tool ran (after its call, id 6) the finding 8 was not committed yet
    assert [e.id for e in reads.events(types="find*")] == [4]
    assert [e.id for e in reads.events(run_id="r")] == [3, 6]  # own events, recorded ids
    assert [e.id for e in reads.events(since_id=1, limit=2)] == [3, 4]
    assert reads.get(1).event_type == "file.found" and reads.get(6).event_type == "run.tool_call"
    reads.add(replayed("run.tool_result", 3), recording.events[2])
    assert [e.id for e in reads.events(types=["finding", "file.*"])] == [1, 4, 8]
