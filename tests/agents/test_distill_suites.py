"""The watcher's and the coder's task suites: gold runs of the real loop, tools, sandbox and bus.

Every generated task's oracle run must end done and be judged correct (the coder's snippets run
in the real MicroPython sandbox, the watcher's events are read back from the bus); a wrong
answer must be judged wrong; the suites are deterministic per seed and the evaluation seed is
never trained on; the runs become chat records of the Watcher and Coder prompts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from loopbus.agents.cli import main
from loopbus.agents.distill.code_suite import CODE_KINDS, generate_code_suite
from loopbus.agents.distill.pipeline import (
    VERDICT,
    DistillError,
    ScriptedRuntime,
    TrainOptions,
    examples_from_bus,
    oracle_runs,
    prompt_sha,
    train_adapter,
    write_dataset,
)
from loopbus.agents.distill.tasksuite import (
    EVAL_SEED,
    Task,
    generate_for,
    generate_suite,
    judge,
    oracle_json,
)
from loopbus.agents.distill.watch_suite import WATCH_KINDS, generate_watch_suite
from loopbus.agents.run.loop import run_agent
from loopbus.agents.testing import CountingRuntime
from loopbus.bus import SyncBus

SEEDS = (3, 7, 11)


@pytest.fixture(scope="module")
def counter(tiny_runtime: Any) -> Any:
    # The tiny model's tokenizer counts; a window like SmolLM2's (8,192) so the five-step
    # watcher tasks fit the 40% budget (`distill oracle` with the embedded model: all fit).
    return CountingRuntime(tiny_runtime, context_window=8192)


def _run(task: Task, decisions: list[Any], bus: Any, counter: Any, run_id: str) -> Any:
    runtime = ScriptedRuntime(decisions, counter=counter)
    return run_agent(
        task.agent,
        task.question,
        runtime=runtime,
        bus=bus,
        workspace=task.workspace,
        max_turns=len(decisions) + 1,
        run_id=run_id,
    )


@pytest.mark.parametrize("agent", ["watcher", "coder"])
def test_every_oracle_run_is_done_and_correct(
    agent: str, tmp_path: Path, bus_file: Path, counter: Any
) -> None:
    kinds = WATCH_KINDS if agent == "watcher" else CODE_KINDS
    with SyncBus(bus_file) as bus:
        for seed in SEEDS:
            report = oracle_runs(
                bus, counter, root=tmp_path / "ws", seed=seed, n=len(kinds), agent=agent
            )
            assert (report.runs, report.correct, report.failed) == (len(kinds), len(kinds), [])
        verdicts = [v.payload for v in bus.events(types=VERDICT)]
        assert len(verdicts) == len(SEEDS) * len(kinds)
        assert {v["kind"] for v in verdicts} == set(kinds)
        assert all(v["correct"] and v["suite"] == agent for v in verdicts)
        tasks = {
            t.id: t
            for seed in SEEDS
            for t in generate_for(agent, tmp_path / "again", seed=seed, n=len(kinds))
        }
        for verdict in verdicts:
            task = tasks[verdict["task_id"]]
            events = bus.events(run_id=verdict["run_id"])
            assert events[-1].payload["kind"] == "done"
            results = [e.payload["result"] for e in events if e.event_type == "run.tool_result"]
            if agent == "coder":
                # What the snippet printed in the sandbox is the answer, as a whole word.
                assert len(results) == 1 and task.check(results[0]), (task, results)
            else:
                # The value was read from a file before it was published, never guessed.
                assert any(task.expected[0] in r for r in results[:-1]), task
                assert results[-1] == f"published {task.event_type}"
                published = [e for e in events if e.event_type == task.event_type]
                assert len(published) == 1 and task.check_published(
                    [(published[0].event_type, published[0].payload)]
                )
                assert verdict["event_type"] == task.event_type


def test_wrong_answers_are_judged_wrong(tmp_path: Path, bus_file: Path, counter: Any) -> None:
    watch = next(t for t in generate_watch_suite(tmp_path / "w", seed=5, n=5))
    code = next(t for t in generate_code_suite(tmp_path / "c", seed=5, n=8))
    steps, publish, done = watch.oracle[:-2], watch.oracle[-2], watch.oracle[-1]
    wrong_value = {**publish, "payload": {"value": watch.expected[0] + "0"}}
    wrong_type = {**publish, "event_type": "something.else"}
    answer = code.expected[0]
    with SyncBus(bus_file) as bus:
        watch_runs = {
            "right": [*steps, publish, done],
            "wrong-value": [*steps, wrong_value, done],
            "wrong-type": [*steps, wrong_type, done],
            # The summary says the value, but nothing was published: not the watcher's job.
            "no-publish": [*steps, done],
            "not-done": [*steps, publish],  # the script runs out: the run fails
        }
        judged = {}
        for name, decisions in watch_runs.items():
            outcome = _run(watch, decisions, bus, counter, f"w-{name}")
            judged[name] = judge(watch, outcome, bus)
        assert judged == {
            "right": True,
            "wrong-value": False,
            "wrong-type": False,
            "no-publish": False,
            "not-done": False,
        }
        summaries = {
            "right": f"The answer is {answer}.",
            "longer": f"The answer is {answer}0.",
            "inside": f"The answer is 1{answer}.",
            "other": "I could not compute it.",
        }
        code_judged = {}
        for name, summary in summaries.items():
            decisions = [code.oracle[0], {"action": "done", "summary": summary}]
            outcome = _run(code, decisions, bus, counter, f"c-{name}")
            assert outcome.kind == "done"
            code_judged[name] = judge(code, outcome, bus)
        assert code_judged == {"right": True, "longer": False, "inside": False, "other": False}


@pytest.mark.parametrize("agent", ["watcher", "coder"])
def test_suites_are_deterministic_per_seed(agent: str, tmp_path: Path) -> None:
    kinds = WATCH_KINDS if agent == "watcher" else CODE_KINDS
    n = 3 * len(kinds)
    first = generate_for(agent, tmp_path / "a", seed=3, n=n)
    again = generate_for(agent, tmp_path / "a", seed=3, n=n)  # rewrites the same folders
    other = generate_for(agent, tmp_path / "b", seed=4, n=n)

    def key(t: Task) -> tuple[Any, ...]:
        return (t.id, t.question, t.expected, t.oracle, t.kind, t.files, t.event_type)

    assert [key(t) for t in first] == [key(t) for t in again]
    assert [t.expected for t in first] != [t.expected for t in other]
    assert Counter(t.kind for t in first) == dict.fromkeys(kinds, 3)
    assert len({t.question for t in first}) == n  # varied, never the same task twice
    for task in again:
        assert task.agent == agent and task.id == f"s3-{task.id[3:6]}-{task.kind}"
        assert task.kind.startswith("watch-" if agent == "watcher" else "code-")
        on_disk = sorted(
            p.relative_to(task.workspace).as_posix()
            for p in task.workspace.rglob("*")
            if p.is_file()
        )
        assert on_disk == task.files
        assert task.oracle[-1]["action"] == "done"
        # Not answerable from the question alone (the coder's max states its answer).
        if task.kind != "code-max":
            assert not task.check(task.question), task
        assert not task.check("I could not find it.")
    if agent == "watcher":  # not the assistant's tasks of the same seed: their own stream
        assistant = generate_suite(tmp_path / "c", seed=3, n=n)
        assert not {t.expected[0] for t in first} & {t.expected[0] for t in assistant}


def test_eval_seed_and_unknown_suites_are_refused(tmp_path: Path, bus_file: Path) -> None:
    with SyncBus(bus_file) as bus:
        for agent in ("watcher", "coder"):
            with pytest.raises(DistillError, match="held-out evaluation seed"):
                oracle_runs(bus, None, root=tmp_path, seed=EVAL_SEED, n=1, agent=agent)
        with pytest.raises(DistillError, match="no task suite for 'answer'"):
            oracle_runs(bus, None, root=tmp_path, seed=5, n=1, agent="answer")
    assert not list(tmp_path.glob("s*"))  # refused before writing any workspace
    with pytest.raises(ValueError, match="no task suite"):
        generate_for("answer", tmp_path, seed=5, n=1)


def test_cli_runs_the_coder_suite(tmp_path: Path, tiny_model_path: Path) -> None:
    bus = tmp_path / "oracle.db"
    result = CliRunner().invoke(
        main,
        [
            "--bus",
            str(bus),
            "distill",
            "oracle",
            "--agent",
            "coder",
            "--seed",
            "5",
            "--n",
            "3",
            "--root",
            str(tmp_path / "ws"),
            "--model",
            str(tiny_model_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 oracle runs, 3 done and correct" in result.output
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == sorted(
        t.id for t in generate_code_suite(tmp_path / "other", seed=5, n=3)
    )


def test_examples_of_all_three_agents(
    tmp_path: Path, bus_file: Path, counter: Any, tiny_model_path: Path
) -> None:
    seen: dict[str, tuple[Task, list[list[dict[str, Any]]]]] = {}
    with SyncBus(bus_file) as bus:
        for agent in ("assistant", "watcher", "coder"):
            for task in generate_for(agent, tmp_path / agent, seed=9, n=2):
                runtime = ScriptedRuntime(oracle_json(task), counter=counter)
                outcome = run_agent(
                    agent,
                    task.question,
                    runtime=runtime,
                    bus=bus,
                    workspace=task.workspace,
                    run_id=f"r-{task.id}",
                )
                if outcome.kind == "done":  # an assistant count task cannot be: policy
                    seen[outcome.run_id] = (task, runtime.prompts)
    examples = examples_from_bus(bus_file)
    functions = {"assistant": "Assistant", "watcher": "Watcher", "coder": "Coder"}
    systems = {
        "Assistant": "",
        "Watcher": "You watch a folder of files for other agents",
        "Coder": "You solve the task by writing small Python programs",
    }
    assert {task.agent for task, _ in seen.values()} == set(functions)
    for run_id, (task, prompts) in seen.items():
        mine = [e for e in examples if e.run_id == run_id]
        assert {e.function for e in mine} == {functions[task.agent]}
        assert [e.messages for e in mine] == prompts  # what the model saw, turn by turn
        assert [e.completion for e in mine] == oracle_json(task)
        assert mine[0].messages[0]["content"].startswith(systems[mine[0].function])
    manifest = write_dataset(examples, tmp_path / "data", valid_fraction=0.2)
    assert manifest["functions"] == {
        name: {"prompt_sha256": prompt_sha(name)} for name in functions.values()
    }
    assert len({prompt_sha(name) for name in functions.values()}) == 3
    # One adapter on all three (2 steps): each agent's prompt prefix is computed once.
    options = TrainOptions(iters=2, batch_size=2, layers=1, rank=4, max_seq_length=1024)
    info = train_adapter(
        tmp_path / "data", tmp_path / "lora", model=str(tiny_model_path), options=options
    )["loopbus_training"]
    assert info["dataset"]["functions"] == manifest["functions"]
    assert len(info["group_prefix_tokens"]) == 3
    assert min(info["group_prefix_tokens"]) > 100 > info["shared_prefix_tokens"]
