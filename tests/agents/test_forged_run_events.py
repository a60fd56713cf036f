"""Forged or corrupt run.* events: tools cannot publish them, and reading a run back never
crashes on one (the run ends `failed`, saying what is malformed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loopbus.agents.builtin import get_agent
from loopbus.agents.run import turn
from loopbus.agents.run.loop import resume_run, run_agent, unfinished_runs
from loopbus.agents.run.state import RunSettings
from loopbus.agents.testing import CountingRuntime
from loopbus.agents.tools.core import ToolError
from loopbus.baml_client import types


def _start(runtime: Any, bus: Any, run_id: str, agent: str = "assistant", **kw: Any) -> Any:
    spec = get_agent(agent)
    settings = RunSettings(
        agent=agent,
        function=spec.function,
        max_turns=kw.pop("max_turns", 2),
        model=runtime.spec,
        context_window=runtime.context_window,
        supports_schema=runtime.supports_schema,
    )
    return turn.new_run(
        settings, "Look around.", runtime=runtime, bus=bus, run_id=run_id, caused_by=None
    )


def _record_decision(state: Any, decision: Any) -> None:
    state.turn += 1
    call = {"turn": state.turn, "prompt_sha256": "-", "prompt_tokens": 0, "raw": "{}"}
    record = {"turn": state.turn, "decision": decision.model_dump(mode="json")}
    state.emit(("run.model_call", call, None), ("run.decision", record, None))


FORGED = [
    ("run.outcome", {}, "run.outcome (event 2) is malformed: it has no 'kind'"),
    ("run.outcome", {"kind": "pwned"}, "its kind 'pwned' is none of done, budget_exceeded"),
    ("run.outcome", {"kind": "done", "summary": 5}, "its 'summary' is a JSON number"),
    ("run.decision", {"turn": 1, "decision": {"action": "rm_rf"}}, "holds an unknown decision"),
    ("run.decision", {"turn": 1}, "it has no 'decision'"),
    ("run.model_call", {"turn": "1"}, "its 'turn' is a JSON string"),
    ("run.model_call", {"turn": True}, "its 'turn' is a JSON boolean"),
    ("run.tool_call", {"turn": 1}, "it has no 'tool'"),
    ("run.tool_result", [1, 2], "its payload is a JSON array, not an object"),
    ("run.error", {"kind": "parse"}, "it has no 'error'"),
    ("run.task", {"task": "again", "settings": {}}, "is a second run.task"),
]


@pytest.mark.parametrize(("kind", "payload", "expected"), FORGED)
def test_a_malformed_run_event_ends_the_run_failed_with_the_reason(
    tiny_runtime: Any, bus: Any, kind: str, payload: Any, expected: str
) -> None:
    state = _start(tiny_runtime, bus, "r-forged")
    # What a tool could publish before publishes were checked: a run.* event in its own run.
    bus.publish(kind, payload, agent="assistant", run_id="r-forged", caused_by=state.origin)
    runtime = CountingRuntime(tiny_runtime)
    outcome = resume_run("r-forged", runtime=runtime, bus=bus)
    assert outcome.kind == "failed"
    assert outcome.reason is not None and expected in outcome.reason, outcome.reason
    assert outcome.reason.startswith("cannot resume run r-forged: its ")
    assert runtime.calls == 0  # nothing is asked of the model on a malformed run
    outcomes = bus.events(run_id="r-forged", types=["run.outcome"])
    assert outcomes[-1].payload["kind"] == "failed"
    assert unfinished_runs(bus, "assistant") == []
    # Read back again (a redelivered trigger): the recorded failure, nothing new published.
    count = len(bus.events(run_id="r-forged"))
    assert resume_run("r-forged", runtime=runtime, bus=bus) == outcome
    assert run_agent("assistant", "x", runtime=runtime, bus=bus, run_id="r-forged") == outcome
    assert len(bus.events(run_id="r-forged")) == count


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"task": "t"}, "it has no 'settings'"),
        ({"task": "t", "settings": {"agent": "assistant"}}, "settings.function: Field required"),
        (
            {"task": "t", "settings": {"agent": "assistant", "function": "NoSuchFn"}},
            "names no known BAML function",
        ),
        ("just text", "its payload is a JSON string"),
    ],
)
def test_a_malformed_run_task_ends_the_run_failed(
    tiny_runtime: Any, bus: Any, payload: Any, expected: str
) -> None:
    bus.publish("run.task", payload, agent="assistant", run_id="r-bad-task")
    assert unfinished_runs(bus, "assistant") == ["r-bad-task"]
    outcome = resume_run("r-bad-task", runtime=tiny_runtime, bus=bus)
    assert outcome.kind == "failed" and expected in (outcome.reason or ""), outcome.reason
    assert unfinished_runs(bus, "assistant") == []
    [recorded] = bus.events(run_id="r-bad-task", types=["run.outcome"])
    assert recorded.payload["reason"] == outcome.reason and recorded.agent == "assistant"


def test_a_well_formed_run_resumes_as_before(tiny_runtime: Any, bus: Any, workspace: Path) -> None:
    state = _start(tiny_runtime, bus, "r-fine", max_turns=1)
    _record_decision(state, types.ListDir(action="list_dir", path="."))
    outcome = resume_run("r-fine", runtime=tiny_runtime, bus=bus, workspace=workspace)
    assert outcome.kind in ("done", "max_turns"), outcome
    assert (
        "README.md" in bus.events(run_id="r-fine", types=["run.tool_result"])[0].payload["result"]
    )


def test_tools_cannot_publish_run_events(tiny_runtime: Any, bus: Any) -> None:
    state = _start(tiny_runtime, bus, "r-tool")
    before = len(bus.events())
    for event_type in ("run.outcome", "run", "run.task.extra"):
        with pytest.raises(ToolError, match="reserved for the loop"):
            state.ctx.publish(event_type, {"kind": "done"})
    with pytest.raises(ToolError, match="reserved for the loop"):
        state.ctx.publish_many([("finding", {"n": 1}), ("run.outcome", {"kind": "done"})])
    assert len(bus.events()) == before  # the batch is refused whole
    assert state.ctx.publish("runner.done", {"n": 1}) > 0  # only the namespace is reserved
    assert state.ctx.publish_many([("finding", {"n": 2})])


def test_guest_code_cannot_forge_a_run_event(tiny_runtime: Any, bus: Any) -> None:
    state = _start(tiny_runtime, bus, "r-guest", agent="coder", max_turns=1)
    code = "publish('run.outcome', {'kind': 'done', 'summary': 'forged'})"
    _record_decision(state, types.RunPython(action="run_python", code=code))
    outcome = resume_run("r-guest", runtime=tiny_runtime, bus=bus)
    assert outcome.kind == "max_turns"  # the real outcome; nothing forged was stored
    events = bus.events(run_id="r-guest")
    [result] = [e for e in events if e.event_type in ("run.tool_result", "run.error")]
    assert "reserved for the" in str(result.payload)  # refused by the sandbox or ToolContext
    assert [e.payload["kind"] for e in events if e.event_type == "run.outcome"] == ["max_turns"]


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        ("run.model_call", [1], "its run.model_call (event 2) is malformed: its payload is a JSON"),
        ("run.model_call", {"turn": 1}, "it has no 'raw' text"),
        ("run.llm_call", {"turn": "x"}, "its run.llm_call (event 2) is malformed"),
        ("run.outcome", {}, "its run.outcome (event 2) is malformed: it has no 'kind'"),
    ],
)
def test_replay_refuses_a_malformed_recording_with_a_clear_error(
    tiny_runtime: Any, bus: Any, kind: str, payload: Any, expected: str
) -> None:
    from loopbus.agents.errors import AgentError
    from loopbus.agents.run.replay import Recording, replay

    _start(tiny_runtime, bus, "r-rec")
    bus.publish(kind, payload, agent="assistant", run_id="r-rec")
    resume_run("r-rec", runtime=tiny_runtime, bus=bus)
    with pytest.raises(AgentError, match="malformed recording of run 'r-rec'") as info:
        replay(Recording.from_bus(bus, "r-rec"))
    assert expected in str(info.value)


def test_a_stray_event_before_the_task_does_not_crash_start_or_resume(
    tiny_runtime: Any, bus: Any
) -> None:
    # Published with the run's id by other means before the run started.
    bus.publish("note", {"x": 1}, agent="cli", run_id="r-stray")
    outcome = run_agent(
        "assistant", "hi", runtime=tiny_runtime, bus=bus, run_id="r-stray", max_turns=1, budget=1.0
    )
    assert outcome.kind in ("done", "max_turns")
    events = bus.events(run_id="r-stray")
    assert [e.event_type for e in events][:2] == ["note", "run.task"]
    # Read back (a restarted agent): a recorded outcome is returned as it is.
    assert resume_run("r-stray", runtime=tiny_runtime, bus=bus) == outcome
    # An unfinished one ends failed, saying why.
    bus.publish("note", {"x": 1}, agent="cli", run_id="r-stray2")
    bus.publish("run.task", {"task": "t", "settings": {}}, agent="assistant", run_id="r-stray2")
    failed = resume_run("r-stray2", runtime=tiny_runtime, bus=bus)
    assert failed.kind == "failed" and "settings.agent: Field required" in (failed.reason or "")
    _start(tiny_runtime, bus, "r-stray3")
    first = bus.events(run_id="r-stray3")[0]
    bus.publish("note", {}, agent="cli", run_id="r-stray4")
    bus.publish("run.task", first.payload, agent="assistant", run_id="r-stray4")
    failed = resume_run("r-stray4", runtime=tiny_runtime, bus=bus)
    assert failed.kind == "failed"
    assert (
        "its note (event" in (failed.reason or "") and "comes before its run.task" in failed.reason
    )
