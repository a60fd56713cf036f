"""Durable resume: runs are rebuilt from the bus and continue without re-asking recorded decisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from loopbus.agents.builtin import get_agent
from loopbus.agents.run import turn
from loopbus.agents.run.decide import Decider
from loopbus.agents.run.loop import resume_run, run_agent, unfinished_runs
from loopbus.agents.run.state import RunSettings
from loopbus.agents.testing import CountingRuntime
from loopbus.baml_client import types


def _start(
    runtime: Any,
    bus: Any,
    run_id: str,
    workspace: Path | None = None,
    max_turns: int = 3,
    agent: str = "assistant",
) -> Any:
    spec = get_agent(agent)
    settings = RunSettings(
        agent=agent,
        function=spec.function,
        max_turns=max_turns,
        workspace=str(workspace) if workspace else None,
        model=runtime.spec,
        context_window=runtime.context_window,
        supports_schema=runtime.supports_schema,
    )
    return turn.new_run(
        settings, "What is in the folder?", runtime=runtime, bus=bus, run_id=run_id, caused_by=None
    )


def _record_decision(state: Any, decision: Any) -> None:
    """A decision recorded without its tool call or outcome (what loopbus before one-commit
    turns left after a crash right after the model answered): resume must still handle it."""
    state.turn += 1
    call = {
        "turn": state.turn,
        "prompt_sha256": "-",
        "prompt_tokens": 0,
        "counts": {},
        "elided": 0,
        "raw": decision.model_dump_json(),
    }
    record = {"turn": state.turn, "decision": decision.model_dump(mode="json")}
    state.emit(("run.model_call", call, None), ("run.decision", record, None))


def test_resume_does_not_reask_a_recorded_decision(
    tiny_runtime: Any, bus: Any, workspace: Path
) -> None:
    state = _start(tiny_runtime, bus, "r-crash1", workspace)
    _record_decision(state, types.ListDir(action="list_dir", path="."))
    assert unfinished_runs(bus, "assistant") == ["r-crash1"]

    runtime = CountingRuntime(tiny_runtime)
    outcome = resume_run("r-crash1", runtime=runtime, bus=bus)
    events = bus.events(run_id="r-crash1")
    types_ = [e.event_type for e in events]
    # The recorded list_dir ran first, without a model call.
    assert types_[1:5] == ["run.model_call", "run.decision", "run.tool_call", "run.tool_result"]
    assert "README.md" in events[4].payload["result"]
    assert runtime.calls == types_.count("run.model_call") - 1
    assert types_.count("run.outcome") == 1 and outcome.run_id == "r-crash1"
    assert unfinished_runs(bus, "assistant") == []
    # Resuming a finished run returns its outcome and publishes nothing.
    again = CountingRuntime(tiny_runtime)
    assert resume_run("r-crash1", runtime=again, bus=bus) == outcome
    assert again.calls == 0 and len(bus.events(run_id="r-crash1")) == len(events)
    # run_agent with the run id of a run on the bus resumes instead of starting over.
    assert run_agent("assistant", "other", runtime=again, bus=bus, run_id="r-crash1") == outcome


def test_idempotent_call_without_result_is_rerun(
    tiny_runtime: Any, bus: Any, workspace: Path
) -> None:
    state = _start(tiny_runtime, bus, "r-crash2", workspace, max_turns=1)
    _record_decision(state, types.ReadFile(action="read_file", path="README.md"))
    call = state.emit(
        (
            "run.tool_call",
            {
                "turn": 1,
                "tool": "read_file",
                "args": {"action": "read_file", "path": "README.md"},
                "idempotent": True,
            },
            state.bus.last_id(),
        )
    )[0]
    runtime = CountingRuntime(tiny_runtime)
    outcome = resume_run("r-crash2", runtime=runtime, bus=bus)
    events = bus.events(run_id="r-crash2")
    result = events[4]
    assert result.event_type == "run.tool_result" and result.caused_by == call.id
    assert "Pebble" in result.payload["result"]
    assert [e.event_type for e in events].count("run.tool_call") == 1  # not recorded twice
    assert outcome.kind == "max_turns" and runtime.calls == 0


def test_non_idempotent_call_in_doubt_is_reported(tiny_runtime: Any, bus: Any) -> None:
    state = _start(tiny_runtime, bus, "r-crash3", max_turns=1, agent="coder")
    code = "publish('finding', {'n': 1})"
    _record_decision(state, types.RunPython(action="run_python", code=code))
    state.emit(
        (
            "run.tool_call",
            {
                "turn": 1,
                "tool": "run_python",
                "args": {"action": "run_python", "code": code},
                "idempotent": False,
            },
            None,
        )
    )
    resume_run("r-crash3", runtime=tiny_runtime, bus=bus)
    error = bus.events(run_id="r-crash3", types="run.error")[0]
    assert error.payload["kind"] == "unknown_outcome"
    assert "outcome unknown after crash" in error.payload["error"]
    assert bus.events(types="finding") == []  # not silently repeated


def test_done_decision_without_outcome_finishes_once(tiny_runtime: Any, bus: Any) -> None:
    state = _start(tiny_runtime, bus, "r-crash4")
    _record_decision(state, types.Done(action="done", summary="42"))
    runtime = CountingRuntime(tiny_runtime)
    outcome = resume_run("r-crash4", runtime=runtime, bus=bus)
    assert (outcome.kind, outcome.summary, runtime.calls) == ("done", "42", 0)
    assert len(bus.events(run_id="r-crash4", types="run.outcome")) == 1


def test_resume_after_sigkill(tiny_model_path: Path, bus_file: Path, workspace: Path) -> None:
    """A real process killed mid-run; a fresh process resumes it from the bus."""
    script = f"""
import os, signal
from loopbus.bus import SyncBus
from loopbus.models import load_runtime
from loopbus.agents.run.loop import run_agent
rt = load_runtime({str(tiny_model_path)!r})
def on_event(e):
    if e.event_type == "run.tool_call" or e.event_type == "run.outcome":
        os.kill(os.getpid(), signal.SIGKILL)
with SyncBus({str(bus_file)!r}) as bus:
    run_agent("assistant", "List the files.", runtime=rt, bus=bus, workspace={str(workspace)!r},
              max_turns=2, run_id="r-kill", on_event=on_event)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    from loopbus.bus import SyncBus
    from loopbus.models import load_runtime

    with SyncBus(bus_file) as bus:
        before = bus.events(run_id="r-kill")
        if before[-1].event_type == "run.outcome":  # died after its (durable) outcome
            assert unfinished_runs(bus, "assistant") == []
            return
        assert unfinished_runs(bus, "assistant") == ["r-kill"]
        runtime = CountingRuntime(load_runtime(str(tiny_model_path)))
        outcome = resume_run("r-kill", runtime=runtime, bus=bus)
        after = bus.events(run_id="r-kill")
        assert after[: len(before)] == before
        assert [e.event_type for e in after].count("run.outcome") == 1
        recorded = [e for e in before if e.event_type == "run.model_call"]
        assert runtime.calls == len([e for e in after if e.event_type == "run.model_call"]) - len(
            recorded
        )
        assert outcome.kind in ("done", "max_turns", "budget_exceeded")
        assert Decider("Assistant")  # the decider of the recorded function still loads
