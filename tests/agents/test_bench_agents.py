"""The agent benchmark's harness runs every arm end to end (tiny model: the figures are noise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_every_arm_runs_and_is_scored(tiny_runtime: Any, tmp_path: Path) -> None:
    from bench.bench_agents import ARMS, arm_agents, run_arm, summarize
    from loopbus.agents.distill.tasksuite import generate_suite
    from loopbus.agents.testing import CountingRuntime

    # The worked-examples prompt is ~1,700 tiny-tokenizer tokens: a window with room for it.
    runtime = CountingRuntime(tiny_runtime, context_window=8192)

    tasks = generate_suite(tmp_path / "suite", seed=3, n=1)
    names = arm_agents()
    assert set(names) == set(ARMS)
    for arm, name in names.items():
        results = run_arm(name, tasks, runtime, tmp_path / f"{arm.replace('+', '-')}.db")
        assert [r.task_id for r in results] == [t.id for t in tasks]
        for result, task in zip(results, tasks, strict=True):
            assert result.turns >= 1 and result.prefill_tokens > 0
            assert result.correct == (result.outcome == "done" and task.check(result.summary))
        summary = summarize(results)
        assert summary["n"] == 1 and 0 <= summary["rate"] <= 1
        if ARMS[arm][1]:  # the policy's runs never answer before reading a file
            assert all(r.actions[0].split()[0] != "done" for r in results)


def test_watcher_and_coder_are_scored_as_shipped(tiny_runtime: Any, tmp_path: Path) -> None:
    """Gold decisions score every task correct, a wrong answer scores wrong, and the tiny
    model's own runs (the shipped prompt and policy) run and are scored."""
    from bench.bench_agents import AGENT_TASKS, SHIPPED, agent_arms, run_arm, summarize, task_counts
    from loopbus.agents.distill.tasksuite import EVAL_SEED, generate_for, oracle_json
    from loopbus.agents.testing import CountingRuntime, ScriptedRuntime

    assert task_counts(None, ["watcher", "coder"]) == {"watcher": 10, "coder": 10}
    assert task_counts("3", list(AGENT_TASKS)) == dict.fromkeys(AGENT_TASKS, 3)
    assert task_counts("coder=4", list(AGENT_TASKS)) == {**AGENT_TASKS, "coder": 4}
    assert agent_arms("assistant", ["policy"]) == {"policy": "bench.bench_agents:bench_policy"}
    counter = CountingRuntime(tiny_runtime, context_window=8192)
    for agent in ("watcher", "coder"):
        assert agent_arms(agent, ["policy"]) == {SHIPPED: agent}
        tasks = generate_for(agent, tmp_path / agent, seed=EVAL_SEED, n=3)
        gold = ScriptedRuntime([d for t in tasks for d in oracle_json(t)], counter=counter)
        results = run_arm(agent, tasks, gold, tmp_path / f"{agent}-gold.db")
        assert [r.task_id for r in results] == [t.id for t in tasks]
        assert all(r.correct and r.outcome == "done" for r in results), results
        assert summarize(results)["correct"] == 3
        if agent == "watcher":
            assert all(
                r.actions[-2] == f"publish {t.event_type}"
                for r, t in zip(results, tasks, strict=True)
            )
        else:
            assert [r.actions for r in results] == [["run_python", "done"]] * 3
        # The answer replaced by a wrong one (the watcher publishes another value): scored wrong.
        task = tasks[0]
        steps = task.oracle[:-2] if agent == "watcher" else task.oracle[:-1]
        answer: list[dict[str, Any]] = [{"action": "done", "summary": "It is 0."}]
        if agent == "watcher":
            payload = {"value": "nothing-000"}
            answer.insert(
                0, {"action": "publish", "event_type": task.event_type, "payload": payload}
            )
        wrong = ScriptedRuntime([*steps, *answer], counter=counter)
        [result] = run_arm(agent, [task], wrong, tmp_path / f"{agent}-wrong.db")
        assert result.outcome == "done" and not result.correct
        # The tiny model itself, constrained by the agent's schema and policy.
        [own] = run_arm(agent, [task], counter, tmp_path / f"{agent}-tiny.db")
        assert own.turns >= 1 and own.prefill_tokens > 0
        assert own.correct <= (own.outcome == "done")
