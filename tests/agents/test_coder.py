"""RunPython wiring: one sandbox session per run, traps become error events, fresh session after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import agents.sandbox  # noqa: F401  (a broken sandbox must fail this module, not skip it)
from agents import turn
from agents.builtin import get_agent
from agents.runstate import RunSettings
from baml_client import types


def _run_code(state: Any, code: str) -> Any:
    decision = types.RunPython(action="run_python", code=code)
    state.pending = decision
    turn.call_tool(state, decision)
    return state.bus.events(run_id=state.run_id)[-1]


def test_sandbox_session_per_run(tiny_runtime: Any, bus: Any, workspace: Path) -> None:
    spec = get_agent("coder")
    assert spec.tools == ("run_python", "done")
    settings = RunSettings(agent="coder", function=spec.function, workspace=str(workspace))
    state = turn.new_run(
        settings, "compute", runtime=tiny_runtime, bus=bus, run_id="r-code", caused_by=None
    )
    try:
        # Fenced code (as small models write it) runs; variables persist across turns.
        first = _run_code(state, "```python\n# plan: store x\nx = 21\nprint(x * 2)\n```")
        assert (first.event_type, first.payload["result"]) == ("run.tool_result", "42")
        second = _run_code(state, "print(open('/input/README.md').read().split()[1], x)")
        assert second.payload["result"] == "Pebble 21"
        publish = _run_code(state, "publish('note', {'n': x})")
        assert publish.event_type == "run.tool_result"
        (note,) = bus.events(types="note")
        assert (note.run_id, note.payload) == ("r-code", {"n": 21})
        trap = _run_code(state, "while True:\n    pass")
        assert trap.event_type == "run.error" and "sandbox was restarted" in trap.payload["error"]
        fresh = _run_code(state, "print(x)")
        assert fresh.event_type == "run.error" and "NameError" in fresh.payload["error"]
        escape = _run_code(state, "print(open('/etc/passwd').read())")
        assert escape.event_type == "run.error"
    finally:
        state.ctx.close()
    assert state.ctx.resources == {}
