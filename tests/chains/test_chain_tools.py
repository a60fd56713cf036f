"""The chain agents' deterministic tools and the first_tool prelude, on a real bus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chain_helpers import make_workspace, write_chain

from loopbus.agents.chains.config import ConfigError, UnknownTool, check_registry, load_config
from loopbus.agents.chains.worker import AgentWorker
from loopbus.agents.examples import chain_agents
from loopbus.agents.tools.core import BusReads, ToolContext
from loopbus.baml_client import types
from loopbus.bus import NewEvent, SyncBus

REVIEW = """
[agents.scanner]
subscribe = ["scan.request"]
first_tool = "scan_files"
max_turns = 2
budget = 1.0

[agents.reviewer]
subscribe = ["file.found"]
first_tool = "check_file"
emit = "review.done"
max_turns = 1
budget = 1.0
"""


def test_first_tool_is_the_first_decision_and_scanner_fans_out(
    tmp_path: Path, tiny_model_path: Path, bus_file: Path, tiny_runtime: Any
) -> None:
    ws = make_workspace(tmp_path / "ws", 3)
    config = load_config(
        write_chain(
            tmp_path / "c.toml",
            REVIEW,
            model=tiny_model_path,
            workspace=ws,
            output=tmp_path / "out",
        )
    )
    check_registry(config)
    with SyncBus(bus_file) as bus:
        scan = bus.publish("scan.request", {})
        AgentWorker(config, "scanner", bus, runtime=tiny_runtime).serve(idle_exit=0.3, poll=0.1)
        found = bus.events(types=["file.found"])
        assert [e.payload["path"] for e in found] == [
            "mod00.py",
            "mod01.py",
            "mod02.py",
            "test_mod01.py",
        ]
        assert {(e.payload["scan"], e.payload["total"], e.caused_by) for e in found} == {
            (scan, 4, scan)
        }
        run = bus.events(run_id=f"scanner-e{scan}")
        kinds = [e.event_type for e in run]
        # the first decision is the first_tool, recorded like a model decision (no model call)
        assert kinds[:4] == ["run.task", "run.model_call", "run.decision", "run.tool_call"]
        assert run[1].payload["finish_reason"] == "forced"
        assert run[1].payload["completion_tokens"] == 0
        assert run[2].payload["decision"] == {"action": "scan_files"}
        # then the real model takes turn 2
        calls = [e.payload for e in run if e.event_type == "run.model_call"]
        assert len(calls) == 2 and calls[1]["finish_reason"] != "forced"
        assert kinds[-1] == "run.outcome"

        AgentWorker(config, "reviewer", bus, runtime=tiny_runtime).serve(idle_exit=0.3, poll=0.1)
        assert len(bus.events(types=["review.done"])) == 4
        messages = sorted(e.payload["message"] for e in bus.events(types=["finding"]))
        assert messages == [
            "TODO left in mod00.py:5: handle case 0",
            "no tests for module mod00 (mod00.py)",
            "no tests for module mod02 (mod02.py)",
        ]
        text, reviewed, total, count = chain_agents.render_report(bus, scan)
    assert (reviewed, total, count) == (4, 4, 3)
    assert "4/4 files reviewed (complete), 3 findings" in text


def test_first_tool_must_be_an_argument_free_tool_of_the_agent(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    base = '[agents.planner]\nsubscribe = ["goal"]\n'
    ws = tmp_path
    bad = write_chain(
        tmp_path / "a.toml",
        base + 'first_tool = "plan_subgoals"\n',
        model=tiny_model_path,
        workspace=ws,
        output=ws,
    )
    with pytest.raises(ConfigError, match="takes arguments \\(first, second, third\\)"):
        check_registry(load_config(bad))
    bad = write_chain(
        tmp_path / "b.toml",
        base + 'first_tool = "scan_files"\n',
        model=tiny_model_path,
        workspace=ws,
        output=ws,
    )
    with pytest.raises(UnknownTool, match="first_tool 'scan_files' is not one of 'planner'"):
        check_registry(load_config(bad))


def tool_context(bus: SyncBus, run_id: str, agent: str, trigger: int, out: Path) -> ToolContext:
    """What the loop gives a tool of run ``run_id`` triggered by event ``trigger``."""

    def publish_many(items: list[tuple[str, Any]]) -> list[int]:
        return bus.publish_many(
            [
                NewEvent(event_type=t, payload=p, agent=agent, run_id=run_id, caused_by=trigger)
                for t, p in items
            ]
        )

    return ToolContext(
        run_id,
        agent,
        None,
        bus=BusReads(bus),
        caused_by=trigger,
        output=out,
        publish_many=publish_many,
    )


def test_plan_fan_out_and_fan_in(tmp_path: Path, bus_file: Path) -> None:
    out = tmp_path / "out"
    with SyncBus(bus_file) as bus:
        goal = bus.publish("goal", {"goal": "add things"})
        ctx = tool_context(bus, "planner-e1", "planner", goal, out)
        plan = types.PlanSubgoals(action="plan_subgoals", first="1+1?", second="2+2?", third="")
        assert chain_agents.plan_subgoals(plan, ctx) == "published 2 sub-goals"
        assert chain_agents.plan_subgoals(plan, ctx) == "this plan was already published"
        subgoals = bus.events(types=["subgoal"])
        assert [s.payload["text"] for s in subgoals] == ["1+1?", "2+2?"]

        def answer(sub: Any, text: str) -> int:
            payload = {**sub.payload, "trigger_id": sub.id, "outcome": "done", "summary": text}
            return bus.publish(
                "subgoal.answered",
                payload,
                agent="worker",
                run_id=f"worker-e{sub.id}",
                caused_by=sub.id,
            )

        def assemble(trigger: int) -> str:
            call = types.AssembleResult(action="assemble_result")
            ctx = tool_context(bus, f"writer-e{trigger}", "writer", trigger, out)
            return chain_agents.assemble_result(call, ctx)

        first = answer(subgoals[1], "4")
        assert assemble(first) == "waiting: 1/2 sub-goals answered (missing [0])"
        assert not (out / "result.md").exists()
        second = answer(subgoals[0], "2")
        assert assemble(second) == "wrote result.md with 2 answers"
    result = (out / "result.md").read_text()
    assert "## 1. 1+1?\n\n2\n" in result and "## 2. 2+2?\n\n4\n" in result
