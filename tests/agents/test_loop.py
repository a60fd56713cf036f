"""The loop end to end with the tiny real model on real bus files: turns, outcomes, the budget."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from loopbus.agents.builtin import get_agent
from loopbus.agents.run import turn
from loopbus.agents.run.context import Elided, LogEvent, parse_log
from loopbus.agents.run.decide import Decider
from loopbus.agents.run.loop import run_agent, step
from loopbus.agents.run.state import RunSettings
from loopbus.agents.testing import CountingRuntime


def _settings(runtime: Any, workspace: Path | None = None, **kw: Any) -> RunSettings:
    spec = get_agent("assistant")
    return RunSettings(
        agent="assistant",
        function=spec.function,
        model=runtime.spec,
        context_window=runtime.context_window,
        supports_schema=runtime.supports_schema,
        workspace=str(workspace) if workspace else None,
        **kw,
    )


def _types(bus: Any, run_id: str) -> list[str]:
    return [e.event_type for e in bus.events(run_id=run_id)]


def test_full_run_end_to_end(tiny_runtime: Any, bus: Any, workspace: Path) -> None:
    seen: list[Any] = []
    outcome = run_agent(
        "assistant",
        "What version is Pebble?",
        runtime=tiny_runtime,
        bus=bus,
        workspace=workspace,
        max_turns=3,
        on_event=seen.append,
    )
    assert outcome.kind in ("done", "max_turns", "budget_exceeded")  # random weights
    events = bus.events(run_id=outcome.run_id)
    assert [e.id for e in events] == [e.id for e in seen]  # on_event saw every committed event
    assert events[0].event_type == "run.task" and events[-1].event_type == "run.outcome"
    assert _types(bus, outcome.run_id).count("run.outcome") == 1
    assert all(e.agent == "assistant" and e.run_id == outcome.run_id for e in events)
    by_id = {e.id: e for e in events}
    for before, e in zip(events, events[1:], strict=False):
        if e.event_type == "run.tool_call":  # committed with its decision, right after it
            assert before.event_type == "run.decision" and e.caused_by is None
            assert before.payload["decision"] == e.payload["args"]
        if e.event_type in ("run.tool_result",) or (
            e.event_type == "run.error" and e.payload["kind"] == "tool"
        ):
            assert by_id[e.caused_by].event_type == "run.tool_call"
    calls = [e for e in events if e.event_type == "run.model_call"]
    assert 1 <= len(calls) == events[-1].payload["turns"] <= 3
    assert all(c.payload["prompt_tokens"] <= 0.4 * tiny_runtime.context_window for c in calls)
    if outcome.kind == "done":
        assert outcome.summary == events[-2].payload["decision"]["summary"]


def test_step_is_exactly_one_turn(tiny_runtime: Any, bus: Any, workspace: Path) -> None:
    state = turn.new_run(
        _settings(tiny_runtime, workspace),
        "List the files.",
        runtime=tiny_runtime,
        bus=bus,
        run_id="r-step",
        caused_by=None,
    )
    decider = Decider("Assistant")
    result = step(state, tiny_runtime, decider)
    types = _types(bus, "r-step")
    assert types.count("run.model_call") == 1 and state.turn == 1
    if result is None:  # a tool turn: call recorded before its result
        assert types[-2:] in (["run.tool_call", "run.tool_result"], ["run.tool_call", "run.error"])
    else:
        assert result.kind == "done" and types[-1] == "run.outcome"
    # The bus alone rebuilds the context the live loop holds.
    rebuilt, _ = turn.rebuild(bus, "r-step", runtime=tiny_runtime)
    assert rebuilt.log.render() == state.log.render()
    assert rebuilt.turn == state.turn


def test_budget_exceeded_before_any_model_call(
    tiny_model_path: Path, bus: Any, workspace: Path
) -> None:
    from loopbus.models import load_runtime

    runtime = CountingRuntime(load_runtime(str(tiny_model_path), context_window=400))
    outcome = run_agent(
        "assistant", "What version is Pebble?", runtime=runtime, bus=bus, workspace=workspace
    )
    assert outcome.kind == "budget_exceeded" and runtime.calls == 0
    assert "over 40% of the 400-token context window (160 tokens)" in outcome.reason
    last = bus.events(run_id=outcome.run_id)[-1]
    assert last.event_type == "run.outcome" and list(last.payload["counts"].values())[0] > 160


def _window_for_one_turn(runtime: Any, bus: Any, workspace: Path, budget: float) -> int:
    """A context window whose budget fits the first prompt (+16 tokens) but not two turns."""
    decider = Decider("Assistant")
    probe = turn.new_run(
        _settings(runtime, workspace),
        "What version is Pebble?",
        runtime=runtime,
        bus=bus,
        run_id="probe",
        caused_by=None,
    )
    tokens = runtime.count_tokens(decider.messages(probe.log.render()))
    return math.ceil((tokens + 16) / budget)


def test_budget_cap_and_elision(tiny_model_path: Path, bus: Any, workspace: Path) -> None:
    from loopbus.models import load_runtime

    base = load_runtime(str(tiny_model_path))
    window = _window_for_one_turn(base, bus, workspace, 0.4)
    # Unconstrained: every answer fails to parse, so each turn adds an error event.
    strict = CountingRuntime(base, supports_schema=False, context_window=window)
    outcome = run_agent(
        "assistant",
        "What version is Pebble?",
        runtime=strict,
        bus=bus,
        workspace=workspace,
        max_turns=3,
    )
    assert outcome.kind == "budget_exceeded" and strict.calls == 1

    eliding = CountingRuntime(base, supports_schema=False, context_window=window)
    outcome = run_agent(
        "assistant",
        "What version is Pebble?",
        runtime=eliding,
        bus=bus,
        workspace=workspace,
        max_turns=3,
        elide=True,
    )
    assert outcome.kind == "failed" and eliding.calls == 3  # the parse-failure bound, not budget
    calls = [e.payload for e in bus.events(run_id=outcome.run_id, types="run.model_call")]
    assert [c["elided"] for c in calls] == [0, 1, 2]
    assert all(c["prompt_tokens"] <= int(window * 0.4) for c in calls)


def test_elided_context_keeps_the_task_and_marks_the_gap(tiny_runtime: Any, bus: Any) -> None:
    state = turn.new_run(
        _settings(tiny_runtime),
        "task <stays>",
        runtime=tiny_runtime,
        bus=bus,
        run_id="r-el",
        caused_by=None,
    )
    for i in range(3):
        state.emit(("run.error", {"turn": i, "kind": "tool", "error": f"e{i}"}, None))
    state.log.elide_oldest(2)
    items = parse_log(state.log.render())
    assert isinstance(items[0], LogEvent) and items[0].data == {"task": "task <stays>"}
    assert items[1] == Elided(2) and items[2].data == {"error": "e2"}


def test_unparseable_output_fails_after_bounded_retries(tiny_runtime: Any, bus: Any) -> None:
    runtime = CountingRuntime(tiny_runtime, supports_schema=False)
    outcome = run_agent("assistant", "Say hi.", runtime=runtime, bus=bus, max_turns=10)
    assert outcome.kind == "failed" and runtime.calls == 3
    assert "did not parse 3 times in a row" in outcome.reason
    errors = [e.payload for e in bus.events(run_id=outcome.run_id, types="run.error")]
    assert len(errors) == 3 and all(e["kind"] == "parse" for e in errors)
    assert "read_file, list_dir, done" in errors[0]["error"]  # the fed-back hint


def test_max_turns(tiny_runtime: Any, bus: Any) -> None:
    runtime = CountingRuntime(tiny_runtime, supports_schema=False)
    outcome = run_agent("assistant", "Say hi.", runtime=runtime, bus=bus, max_turns=2)
    assert outcome.kind == "max_turns" and runtime.calls == 2
    assert outcome.reason == "no answer after 2 turns"


def test_outcome_is_published_once(tiny_runtime: Any, bus: Any) -> None:
    state = turn.new_run(
        _settings(tiny_runtime), "x", runtime=tiny_runtime, bus=bus, run_id="r-once", caused_by=None
    )
    first = turn.finish(state, "max_turns", reason="stop")
    second = turn.finish(state, "done", summary="again")
    assert first == second and _types(bus, "r-once").count("run.outcome") == 1
    assert step(state, tiny_runtime, Decider("Assistant")) == first


def test_bad_arguments_are_agent_errors(tiny_runtime: Any, bus: Any) -> None:
    import pytest

    from loopbus.agents.builtin import UnknownAgent
    from loopbus.agents.errors import AgentError

    with pytest.raises(UnknownAgent, match="available agents: .*assistant"):
        run_agent("nobody", "x", runtime=tiny_runtime, bus=bus)
    with pytest.raises(AgentError, match="budget"):
        run_agent("assistant", "x", runtime=tiny_runtime, bus=bus, budget=1.5)
    assert bus.events() == []  # nothing was started
