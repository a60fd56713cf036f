"""RunPython wiring: one sandbox session per run, traps become error events, fresh session after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents import pytool, turn
from agents.builtin import get_agent
from agents.config import parse_config
from agents.runstate import RunSettings
from agents.sandbox import Sandbox, SandboxLimits  # a broken sandbox fails here, never skips
from agents.tools import ToolContext, ToolError
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


def test_configured_sandbox_limits_apply_to_the_agents_runs(tmp_path: Path) -> None:
    config = parse_config(
        {
            "agents": {
                "cruncher": {
                    "kind": "coder",
                    "subscribe": ["job"],
                    "sandbox": {"fuel": 2_000_000, "wall_clock_s": 5},
                }
            }
        }
    )
    limits = config.agent("cruncher").sandbox_limits()
    assert limits == SandboxLimits(fuel=2_000_000, wall_clock_s=5.0)
    pytool.set_sandbox_limits("cruncher", limits)
    tight = ToolContext(run_id="r-tight", agent="cruncher")
    default = ToolContext(run_id="r-default", agent="someone-else")
    loop = types.RunPython(
        action="run_python", code="x = 0\nfor i in range(100000):\n    x += i\nprint(x)"
    )
    try:
        assert pytool.sandbox_limits("cruncher") == limits
        with pytest.raises(ToolError) as trapped:
            pytool.run_python(loop, tight)
        assert "2,000,000 wasm instructions" in str(trapped.value)
        assert "sandbox was restarted" in str(trapped.value)
        sandbox = tight.resources["sandbox"]
        assert isinstance(sandbox, Sandbox) and sandbox.limits.fuel == 2_000_000
        # Other agents keep the defaults: the same loop fits easily.
        assert pytool.run_python(loop, default) == "4999950000"
        assert default.resources["sandbox"].limits == SandboxLimits()
    finally:
        pytool.set_sandbox_limits("cruncher", None)
        tight.close()
        default.close()
    assert pytool.sandbox_limits("cruncher") is None
