"""RunPython wiring: one sandbox session per run, traps become error events, fresh session after."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from loopbus.agents.builtin import get_agent
from loopbus.agents.chains.config import parse_config
from loopbus.agents.run import turn
from loopbus.agents.run.state import RunSettings
from loopbus.agents.sandbox.core import (  # a broken sandbox fails here, never skips
    Sandbox,
    SandboxLimits,
)
from loopbus.agents.tools import python as pytool
from loopbus.agents.tools.core import ToolContext, ToolError
from loopbus.baml_client import types


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


LOOP = "x = 0\nfor i in range(100000):\n    x += i\nprint(x)"


def test_configured_sandbox_limits_apply_to_the_agents_runs(
    tiny_runtime: Any, bus: Any, workspace: Path
) -> None:
    """A chain agent's [agents.NAME.sandbox] table is its runs' limits (recorded by each run);
    another agent of the same kind in the same process keeps the defaults."""
    from loopbus.agents.chains.worker import AgentWorker, FirstDecision

    agents = {"subscribe": ["job"], "kind": "coder", "task": "crunch", "max_turns": 1}
    config = parse_config(
        {
            "chain": {"workspace": str(workspace)},
            "agents": {
                "cruncher": {**agents, "sandbox": {"fuel": 2_000_000, "wall_clock_s": 5}},
                "plain": agents,
            },
        }
    )
    limits = config.agent("cruncher").sandbox_limits()
    assert limits == SandboxLimits(fuel=2_000_000, wall_clock_s=5.0)
    job = bus.get(bus.publish("job", {}))
    results = {}
    for name in ("cruncher", "plain", "cruncher"):
        runtime = FirstDecision(tiny_runtime, {"action": "run_python", "code": LOOP})
        AgentWorker(config, name, bus, runtime=runtime).handle(job)
        run_id = f"{name}-e{job.id}"
        results[name] = bus.events(run_id=run_id, types=["run.tool_result", "run.error"])[-1]
        settings = bus.events(run_id=run_id, types=["run.task"])[0].payload["settings"]
        assert settings.get("sandbox") == (asdict(limits) if name == "cruncher" else None)
    trapped, fitted = results["cruncher"], results["plain"]
    assert trapped.event_type == "run.error"
    assert "2,000,000 wasm instructions" in trapped.payload["error"]
    assert "sandbox was restarted" in trapped.payload["error"]
    # The other agent keeps the defaults: the same loop fits easily.
    assert (fitted.event_type, fitted.payload["result"]) == ("run.tool_result", "4999950000")


def test_a_context_without_run_limits_uses_the_agents_default() -> None:
    tight = ToolContext(run_id="r-tight", agent="coder", sandbox=SandboxLimits(fuel=2_000_000))
    default = ToolContext(run_id="r-default", agent="coder")
    loop = types.RunPython(action="run_python", code=LOOP)
    try:
        with pytest.raises(ToolError, match="2,000,000 wasm instructions"):
            pytool.run_python(loop, tight)
        sandbox = tight.resources["sandbox"]
        assert isinstance(sandbox, Sandbox) and sandbox.limits.fuel == 2_000_000
        assert pytool.run_python(loop, default) == "4999950000"
        assert default.resources["sandbox"].limits == SandboxLimits()
    finally:
        tight.close()
        default.close()


def test_sandbox_llm_calls_are_recorded_and_replayed(
    tiny_runtime: Any, bus: Any, workspace: Path
) -> None:
    """llm() / summarize() inside RunPython go to the run's model and into the recording as
    run.llm_call, so a replay answers them without a model (and notices when they change)."""
    from loopbus.agents.chains.worker import FirstDecision
    from loopbus.agents.run.loop import run_agent
    from loopbus.agents.run.replay import Recording, replay

    code = (
        "a = llm('name a colour')\n"
        "s = summarize('Pebble is a tiny language.')\n"
        "try:\n"
        "    llm('word ' * 5000)\n"
        "except Exception as exc:\n"
        "    print('refused:', 'context window' in str(exc))\n"
        "print(len(a), len(s))"
    )
    runtime = FirstDecision(tiny_runtime, {"action": "run_python", "code": code})
    outcome = run_agent(
        "coder", "ask", runtime=runtime, bus=bus, workspace=workspace, max_turns=1, run_id="r-llm"
    )
    assert outcome.kind == "max_turns"
    events = bus.events(run_id="r-llm")
    (call,) = [e for e in events if e.event_type == "run.tool_call"]
    asked = [e for e in events if e.event_type == "run.llm_call"]
    assert [e.caused_by for e in asked] == [call.id] * 3
    first, summary, too_long = (e.payload for e in asked)
    expected = tiny_runtime.generate([{"role": "user", "content": "name a colour"}], max_tokens=256)
    assert first["raw"] == expected.text and first["prompt"] == "name a colour"
    assert summary["prompt"].endswith("Pebble is a tiny language.")
    assert too_long["error"]["type"] == "ModelError" and "raw" not in too_long
    from loopbus.agents.cli.run_cmds import describe

    assert describe(asked[0]).startswith("tool asked the model: name a colour -> ")
    (result,) = [e for e in events if e.event_type == "run.tool_result"]
    lengths = f"{len(first['raw'])} {len(summary['raw'])}"
    assert result.payload["result"] == f"refused: True\n{lengths}"

    recording = Recording.from_bus(bus, "r-llm")
    report = replay(recording, workspace=workspace)  # no model: FirstDecision is gone too
    assert report.ok, report.diff
    assert (report.turns, report.model_calls) == (1, 4)

    # Another answer from the model changes what the tool printed: a divergence.
    changed = recording.model_copy(deep=True)
    llm_calls = [e for e in changed.events if e.type == "run.llm_call"]
    llm_calls[0].payload["raw"] = "ultraviolet"
    report = replay(changed, workspace=workspace)
    assert not report.ok and "(run.tool_result, turn 1)" in report.diff

    # The tool asking something else (here: a recorded prompt that differs) is caught at the
    # call, even though the guest code could catch exceptions from llm().
    changed = recording.model_copy(deep=True)
    llm_calls = [e for e in changed.events if e.type == "run.llm_call"]
    llm_calls[2].payload["prompt_sha256"] = "0" * 64
    report = replay(changed, workspace=workspace)
    assert not report.ok and "this call came from a tool (run.llm_call)" in report.diff
