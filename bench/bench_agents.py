"""Do agents solve their narrow tasks? The built-in agents on generated task suites (issue 10).

Each agent gets its own suite (:func:`loopbus.agents.distill.tasksuite.generate_for`) with the
held-out seed :data:`loopbus.agents.distill.tasksuite.EVAL_SEED` (never looked at while writing
prompts, never trained on):

* ``assistant``: file questions over small workspaces (half need listing a folder, some two
  reads), 20 tasks, scored in the four arms below;
* ``watcher``: find a value in the same kind of workspace and publish it as a typed event
  (correct: the run published the asked event type with the value in its payload), 10 tasks;
* ``coder``: a small computation done with MicroPython in the sandbox (correct: the Done
  summary holds the value as a whole word), 10 tasks.

The watcher and the coder run as shipped (``loopbus run watcher``/``coder``: their own prompt,
decoding policy and ``max_tokens``), one row each. The assistant answers every task in four
arms, in the same run, so the unconstrained baseline is printed beside the rest:

* ``baseline``: the compact ``Assistant`` prompt (whole log in one message), static schema;
* ``turns``: the ``AssistantTurns`` prompt (worked runs, history as alternating turns);
* ``policy``: the compact prompt with the ``assistant`` decoding policy (loopbus.agents.run.policy), which
  is what ``loopbus run assistant`` ships (measured best with SmolLM2);
* ``turns+policy``: both.

Per agent and arm: correct answers, median turns, prefill tokens per task (prompt tokens not
served by the prefix cache), wall time per task, runs that listed a folder, and by task kind.

Environment: ``LOOPBUS_BENCH_AGENT_MODELS`` (comma-separated model specs, default ``default``),
``LOOPBUS_BENCH_AGENT_AGENTS`` (which agents, comma-separated, default
``assistant,watcher,coder``; ``assistant`` alone is the benchmark before the watcher and coder
suites), ``LOOPBUS_BENCH_AGENT_TASKS`` (tasks per agent: one number for every agent, or
``assistant=20,watcher=10,coder=10``, the default; agents not named keep theirs),
``LOOPBUS_BENCH_AGENT_ARMS`` (a subset of the assistant's arms, comma-separated),
``LOOPBUS_BENCH_AGENT_SEED`` (other suites, for development), ``LOOPBUS_BENCH_AGENT_VERBOSE=1``
(every run's actions and answer). Targets: SmolLM2-135M (+ adapter) >= 60% and a Qwen-class 0.5B
>= 80% correct, median <= 4 turns.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

MAX_TURNS = 6
#: The agents scored, and how many held-out tasks each gets by default.
AGENT_TASKS: dict[str, int] = {"assistant": 20, "watcher": 10, "coder": 10}
#: The arm the watcher and the coder run in: their shipped agent, by reference.
SHIPPED = "shipped"
ARMS: dict[str, tuple[str, bool]] = {  # arm -> (BAML function, policy on)
    "baseline": ("Assistant", False),
    "turns": ("AssistantTurns", False),
    "policy": ("Assistant", True),
    "turns+policy": ("AssistantTurns", True),
}


@dataclass
class TaskResult:
    """One task answered in one arm."""

    task_id: str
    kind: str
    correct: bool
    outcome: str
    turns: int
    prefill_tokens: int
    wall_s: float
    actions: list[str]
    summary: str = ""


def _arm_agent(arm: str) -> Any:
    """The `assistant` with this arm's prompt and policy (an Agent, same tools)."""
    from loopbus.agents.builtin import assistant
    from loopbus.agents.run.policy import EXPLORE, Policy

    function, policy_on = ARMS[arm]
    return replace(
        assistant,
        name="bench-" + arm.replace("+", "-"),
        function=function,
        description=f"assistant, bench arm {arm}",
        max_tokens=160,
        policy=EXPLORE if policy_on else Policy(),
        variants=(),
    )


# One agent per arm, referenced as module:attr (runs record the reference).
bench_baseline = _arm_agent("baseline")
bench_turns = _arm_agent("turns")
bench_policy = _arm_agent("policy")
bench_turns_policy = _arm_agent("turns+policy")


def arm_agents() -> dict[str, str]:
    """arm -> the reference of its agent (``bench.bench_agents:bench_ARM``)."""
    return {arm: f"{__name__}:bench_{arm.replace('+', '_')}" for arm in ARMS}


def agent_arms(agent: str, arms: list[str]) -> dict[str, str]:
    """The arms an agent is scored in -> the reference of the agent that runs each: the
    assistant's ``arms`` (see :data:`ARMS`), else the shipped agent itself."""
    if agent == "assistant":
        names = arm_agents()
        return {arm: names[arm] for arm in arms}
    return {SHIPPED: agent}


def task_counts(text: str | None, agents: list[str]) -> dict[str, int]:
    """Tasks per agent from ``LOOPBUS_BENCH_AGENT_TASKS``: ``N`` (every agent) or
    ``agent=N,...`` (the others keep :data:`AGENT_TASKS`); SystemExit on a bad value."""
    counts = {agent: AGENT_TASKS[agent] for agent in agents}
    if not text:
        return counts
    try:
        if "=" not in text:
            return dict.fromkeys(agents, int(text))
        for part in text.split(","):
            name, _, value = part.partition("=")
            if name.strip() not in AGENT_TASKS:
                raise ValueError(f"unknown agent {name.strip()!r}")
            counts[name.strip()] = int(value)
    except ValueError as exc:
        raise SystemExit(f"LOOPBUS_BENCH_AGENT_TASKS={text!r}: {exc}") from None
    return {agent: counts[agent] for agent in agents}


def _action(decision: dict[str, Any]) -> str:
    # "read_file docs/a.txt", "publish finding", "run_python", "done"
    detail = decision.get("path", decision.get("event_type"))
    return decision["action"] + (f" {detail}" if detail is not None else "")


def run_task(agent: str, task: Any, runtime: Any, bus: Any) -> TaskResult:
    """Run ``agent`` on one task; what it answered and what it cost."""
    from loopbus.agents.distill.tasksuite import judge
    from loopbus.agents.run.loop import run_agent

    start = time.perf_counter()
    outcome = run_agent(
        agent,
        task.question,
        runtime=runtime,
        bus=bus,
        workspace=task.workspace,
        max_turns=MAX_TURNS,
    )
    wall = time.perf_counter() - start
    events = bus.events(run_id=outcome.run_id)
    calls = [e.payload for e in events if e.event_type == "run.model_call"]
    prefill = sum((c.get("prompt_tokens") or 0) - (c.get("cached_tokens") or 0) for c in calls)
    actions = [_action(e.payload["decision"]) for e in events if e.event_type == "run.decision"]
    correct = judge(task, outcome, bus)
    return TaskResult(
        task.id,
        task.kind,
        correct,
        outcome.kind,
        len(calls),
        prefill,
        wall,
        actions,
        outcome.summary or outcome.reason or "",
    )


def run_arm(agent: str, tasks: list[Any], runtime: Any, bus_path: Path) -> list[TaskResult]:
    """Every task of the suite, in order, on one bus file."""
    from loopbus.bus import SyncBus

    with SyncBus(bus_path) as bus:
        return [run_task(agent, task, runtime, bus) for task in tasks]


def summarize(results: list[TaskResult]) -> dict[str, Any]:
    """Correct count and rate, median turns, mean prefill tokens and wall time per task."""
    n = len(results)
    return {
        "correct": sum(r.correct for r in results),
        "n": n,
        "rate": sum(r.correct for r in results) / n if n else 0.0,
        "median_turns": statistics.median(r.turns for r in results) if n else 0,
        "prefill": statistics.mean(r.prefill_tokens for r in results) if n else 0,
        "wall_s": statistics.mean(r.wall_s for r in results) if n else 0,
        "list_dir": sum(any(a.startswith("list_dir") for a in r.actions) for r in results),
    }


def _kinds(results: list[TaskResult]) -> str:
    kinds: dict[str, list[bool]] = {}
    for r in results:
        kinds.setdefault(r.kind, []).append(r.correct)
    return " ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(kinds.items()))


def _describe(agent: str, tasks: list[Any], seed: int) -> str:
    n = len(tasks)
    if agent == "coder":
        return f"{n} coder tasks (seed {seed}): one MicroPython snippet each"
    listing = sum(any(s["action"] == "list_dir" for s in t.oracle) for t in tasks)
    two_reads = sum(sum(s["action"] == "read_file" for s in t.oracle) > 1 for t in tasks)
    line = f"{n} {agent} tasks (seed {seed}): {listing} need a listing, {two_reads} two reads"
    return line + ("; each publishes one event" if agent == "watcher" else "")


def main() -> None:
    from loopbus.agents.distill.tasksuite import EVAL_SEED, generate_for
    from loopbus.models import load_runtime

    models = os.environ.get("LOOPBUS_BENCH_AGENT_MODELS", "default").split(",")
    agents = [
        a.strip()
        for a in os.environ.get("LOOPBUS_BENCH_AGENT_AGENTS", ",".join(AGENT_TASKS)).split(",")
    ]
    if unknown := [a for a in agents if a not in AGENT_TASKS]:
        raise SystemExit(f"LOOPBUS_BENCH_AGENT_AGENTS: unknown agents {unknown}")
    counts = task_counts(os.environ.get("LOOPBUS_BENCH_AGENT_TASKS"), agents)
    # Another seed for development (choosing prompts); report on the held-out EVAL_SEED.
    seed = int(os.environ.get("LOOPBUS_BENCH_AGENT_SEED", str(EVAL_SEED)))
    arms = os.environ.get("LOOPBUS_BENCH_AGENT_ARMS", ",".join(ARMS)).split(",")
    verbose = bool(os.environ.get("LOOPBUS_BENCH_AGENT_VERBOSE"))
    with tempfile.TemporaryDirectory(prefix="loopbus-bench-agents-") as tmp:
        suites = {
            agent: generate_for(agent, Path(tmp) / "suite" / agent, seed=seed, n=counts[agent])
            for agent in agents
        }
        for agent, tasks in suites.items():
            print(_describe(agent, tasks, seed))
        print(f"max {MAX_TURNS} turns")
        for number, spec in enumerate(models):
            runtime = load_runtime(spec.strip())
            print(f"\nmodel {spec} (context window {runtime.context_window})")
            print(
                f"  {'agent':<9} {'arm':<12} {'correct':>9} {'rate':>6} {'turns p50':>9} "
                f"{'prefill/task':>12} {'wall/task':>9} {'listed':>6}  by kind"
            )
            for agent, tasks in suites.items():
                for arm, reference in agent_arms(agent, arms).items():
                    bus_file = Path(tmp) / f"{agent}-{arm.replace('+', '-')}-{number}.db"
                    results = run_arm(reference, tasks, runtime, bus_file)
                    s = summarize(results)
                    print(
                        f"  {agent:<9} {arm:<12} {s['correct']:>4}/{s['n']:<4} {s['rate']:>6.0%} "
                        f"{s['median_turns']:>9} {s['prefill']:>12.0f} {s['wall_s']:>8.1f}s "
                        f"{s['list_dir']:>6}  {_kinds(results)}",
                        flush=True,
                    )
                    if verbose:
                        for r in results:
                            mark = "ok " if r.correct else "BAD"
                            print(
                                f"      {mark} {r.task_id}: {' -> '.join(r.actions)} "
                                f"[{r.outcome}] {r.summary[:70]!r}"
                            )


if __name__ == "__main__":
    main()
