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
