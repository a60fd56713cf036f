"""Per-turn decoding policies: the schema narrowed from the run's state, enforced by llguidance,
recorded with the run and reproduced by replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loopbus.agents.run.decide import get_decider
from loopbus.agents.run.policy import (
    ACT_FIRST,
    EXPLORE,
    WATCH,
    Policy,
    RunFacts,
    schema_sha,
    turn_schema,
    violation,
)
from loopbus.agents.testing import CountingRuntime


def _members(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["properties"]["action"]["const"]: m for m in schema["anyOf"]}


def _workspace(root: Path) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "secret.txt").write_text("launch code: falcon-731\n")
    (root / "README.md").write_text("# Demo\n")
    (root / ".hidden").write_text("x")
    return root


def _feed(facts: RunFacts, *events: tuple[str, dict[str, Any], int, int | None]) -> None:
    for kind, payload, event_id, caused_by in events:
        facts.observe(kind, payload, event_id, caused_by)


def test_schema_follows_the_runs_state(tmp_path: Path) -> None:
    base = get_decider("Assistant").schema
    ws = _workspace(tmp_path / "ws")
    facts = RunFacts()
    policy = Policy(paths=True, observe_first=True, no_repeat=True)
    first = _members(turn_schema(base, policy, facts, ws))
    # Done is out before any observation; paths are the workspace's (hidden names skipped).
    assert set(first) == {"read_file", "list_dir"}
    assert first["read_file"]["properties"]["path"]["enum"] == ["README.md", "docs/secret.txt"]
    assert first["list_dir"]["properties"]["path"]["enum"] == [".", "docs"]
    # A failed call is excluded; a failure is no observation, so Done stays out.
    call = {"turn": 1, "tool": "read_file", "args": {"action": "read_file", "path": "README.md"}}
    _feed(facts, ("run.tool_call", call, 5, None), ("run.error", {"kind": "tool"}, 6, 5))
    second = _members(turn_schema(base, policy, facts, ws))
    assert set(second) == {"read_file", "list_dir"}
    assert second["read_file"]["properties"]["path"]["enum"] == ["docs/secret.txt"]
    # A listing's result counts as an observation: Done is back. A call already made (the
    # listing, under another spelling of its path) is left out; listed paths join the enums.
    listing = {"turn": 2, "tool": "list_dir", "args": {"action": "list_dir", "path": "./docs"}}
    _feed(
        facts,
        ("run.tool_call", listing, 7, None),
        ("run.tool_result", {"tool": "list_dir", "result": "secret.txt\nsub/\nnew.txt"}, 8, 7),
    )
    third = turn_schema(base, policy, facts, ws)
    assert set(_members(third)) == {"read_file", "list_dir", "done"}
    # The watcher's policy wants a file read first: a listing is not enough. The assistant's
    # may answer from a listing (it ends with its count).
    assert set(_members(turn_schema(base, WATCH, facts, ws))) == {"read_file", "list_dir"}
    assert set(_members(turn_schema(base, EXPLORE, facts, ws))) == set(_members(third))
    assert _members(third)["list_dir"]["properties"]["path"]["enum"] == [".", "docs/sub"]
    assert "docs/new.txt" in _members(third)["read_file"]["properties"]["path"]["enum"]
    # Once every path has been used, the member goes; Done is all that is left.
    for n, path in enumerate(["docs/secret.txt", "docs/new.txt"]):
        read = {"turn": 3, "tool": "read_file", "args": {"path": path}}
        _feed(facts, ("run.tool_call", read, 20 + 2 * n, None))
        _feed(
            facts, ("run.tool_result", {"tool": "read_file", "result": "x"}, 21 + 2 * n, 20 + 2 * n)
        )
    for n, path in enumerate([".", "docs/sub"]):
        again = {"turn": 4, "tool": "list_dir", "args": {"path": path}}
        _feed(facts, ("run.tool_call", again, 30 + 2 * n, None))
        _feed(facts, ("run.error", {"kind": "tool", "error": "x"}, 31 + 2 * n, 30 + 2 * n))
    assert set(_members(turn_schema(base, WATCH, facts, ws))) == {"done"}
    assert set(_members(turn_schema(base, policy, facts, ws))) == {"done"}
    # Each state has its own schema (and sha256); the static union when the policy is off.
    assert len({schema_sha(s) for s in (first, second, third)}) == 3
    assert turn_schema(base, Policy(), facts, ws) is base


def test_violation_names_what_is_allowed(tmp_path: Path) -> None:
    schema = turn_schema(
        get_decider("Assistant").schema, EXPLORE, RunFacts(), _workspace(tmp_path / "ws")
    )
    assert violation({"action": "read_file", "path": "docs/secret.txt"}, schema) is None
    assert "'secret.txt' is not one of: README.md, docs/secret.txt" in violation(
        {"action": "read_file", "path": "secret.txt"}, schema
    )
    assert "not allowed now; choose one of: read_file, list_dir" in violation(
        {"action": "done", "summary": "x"}, schema
    )


def test_act_first_agents_can_only_act_on_their_first_turn() -> None:
    from loopbus.agents.builtin import get_agent

    base, reviewer = get_decider("Reviewer").schema, get_agent("reviewer").policy
    assert reviewer == ACT_FIRST
    facts = RunFacts()
    schema = turn_schema(base, reviewer, facts, None)
    assert set(_members(schema)) == {"check_file"}
    # After its tool ran, done is the only choice (no second check_file).
    call = {"turn": 1, "tool": "check_file", "args": {"action": "check_file"}}
    _feed(facts, ("run.tool_call", call, 3, None), ("run.tool_result", {"result": "ok"}, 4, 3))
    assert set(_members(turn_schema(base, reviewer, facts, None))) == {"done"}
    for agent, tool in [
        ("scanner", "scan_files"),
        ("reporter", "write_report"),
        ("writer", "assemble_result"),
    ]:
        function = get_agent(agent).function
        first = turn_schema(get_decider(function).schema, get_agent(agent).policy, RunFacts(), None)
        assert set(_members(first)) == {tool}, agent  # no first_tool needed
    assert get_agent("assistant").policy == EXPLORE
    assert get_agent("answer").policy == Policy()


def test_tiny_model_is_held_to_the_policy(tiny_runtime: Any, bus: Any, tmp_path: Path) -> None:
    """Random weights, real llguidance: every decision obeys the turn's schema."""
    from loopbus.agents.run.loop import run_agent

    ws = _workspace(tmp_path / "ws")
    outcome = run_agent(
        "assistant", "Find secret.txt.", runtime=tiny_runtime, bus=bus, workspace=ws, max_turns=4
    )
    events = bus.events(run_id=outcome.run_id)
    task = events[0].payload["settings"]
    assert task["policy"] == EXPLORE.model_dump(mode="json")
    decisions = [e.payload["decision"] for e in events if e.event_type == "run.decision"]
    calls = [e.payload for e in events if e.event_type == "run.model_call"]
    assert decisions and decisions[0]["action"] != "done"
    assert all(c["schema_sha256"] for c in calls)
    for decision in decisions:
        if decision["action"] == "read_file":
            assert decision["path"] in ("README.md", "docs/secret.txt")
        elif decision["action"] == "list_dir":
            assert decision["path"] in (".", "docs")
    assert not [e for e in events if e.event_type == "run.error"]


class _Unconstrained(CountingRuntime):
    """The real model, decoding under a schema that is not the turn's, on a runtime that
    says it has no constrained decoding (as an OpenAI-compatible server without it)."""

    def __init__(self, inner: Any, schema: dict[str, Any]) -> None:
        super().__init__(inner, supports_schema=False)
        self.forced = schema

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        assert kwargs.get("schema") is None
        return super().generate(messages, **{**kwargs, "schema": self.forced})


def test_without_constrained_decoding_a_violation_is_fed_back(
    tiny_runtime: Any, bus: Any, tmp_path: Path
) -> None:
    from loopbus.agents.run.loop import run_agent

    done_only = {"anyOf": [_members(get_decider("Assistant").schema)["done"]]}
    outcome = run_agent(
        "assistant",
        "Answer now.",
        runtime=_Unconstrained(tiny_runtime, done_only),
        bus=bus,
        workspace=_workspace(tmp_path / "ws"),
        max_turns=3,
    )
    errors = [e.payload for e in bus.events(run_id=outcome.run_id, types="run.error")]
    assert errors and errors[0]["kind"] == "parse"
    assert "'done' is not allowed now; choose one of: read_file, list_dir" in errors[0]["error"]
    assert outcome.kind == "failed"  # three answers in a row were refused


def test_replay_reproduces_the_policy_and_checks_its_schema(
    tiny_runtime: Any, bus: Any, tmp_path: Path
) -> None:
    from loopbus.agents.run.loop import run_agent
    from loopbus.agents.run.replay import Recording, replay

    ws = _workspace(tmp_path / "ws")
    outcome = run_agent(
        "assistant", "Find secret.txt.", runtime=tiny_runtime, bus=bus, workspace=ws, max_turns=3
    )
    recording = Recording.from_bus(bus, outcome.run_id)
    assert replay(recording).ok
    # Another workspace tree means another schema on the first turn: a divergence.
    (ws / "extra.txt").write_text("new")
    report = replay(recording)
    assert not report.ok and "the decoding schema changed" in report.diff
    (ws / "extra.txt").unlink()
    # A recorded decision the schema does not allow (an edited recording) is a divergence.
    data = json.loads(recording.model_dump_json())
    first = next(e for e in data["events"] if e["type"] == "run.model_call")
    first["payload"]["raw"] = '{"action":"done","summary":"guess"}'
    report = replay(Recording.model_validate(data))
    assert not report.ok and "not allowed by the policy's schema" in report.diff


@pytest.mark.parametrize("kind", ["read_file", "list_dir"])
def test_llguidance_accepts_only_allowed_paths(
    tiny_runtime: Any, tmp_path: Path, kind: str
) -> None:
    schema = turn_schema(
        get_decider("Assistant").schema, EXPLORE, RunFacts(), _workspace(tmp_path / "ws")
    )
    good = {"read_file": "docs/secret.txt", "list_dir": "docs"}[kind]

    def accepts(document: dict[str, Any]) -> bool:
        text = json.dumps(document, separators=(",", ":"))
        matcher = tiny_runtime.constrainer.compile(schema)
        tokens = tiny_runtime.tokenizer.encode(text, add_special_tokens=False)
        return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()

    assert accepts({"action": kind, "path": good})
    assert not accepts({"action": kind, "path": "secret.txt"})
    assert not accepts({"action": "done", "summary": "x"})


def test_review_chain_agents_pick_their_tool_without_first_tool(
    tiny_runtime: Any, bus: Any, workspace: Path, tmp_path: Path
) -> None:
    """Random weights: each demo-chain agent still calls its tool first, then answers done."""
    import tomllib

    from loopbus.agents.run.loop import run_agent

    config = tomllib.loads(Path("agents/examples/review.toml").read_text())
    assert not any("first_tool" in agent for agent in config["agents"].values())

    def run(agent: str, task: str, caused_by: int) -> list[str]:
        outcome = run_agent(
            agent,
            task,
            runtime=tiny_runtime,
            bus=bus,
            workspace=workspace,
            caused_by=caused_by,
            output=tmp_path,
            max_turns=2,
        )
        assert outcome.kind == "done", outcome
        events = bus.events(run_id=outcome.run_id, types="run.decision")
        return [e.payload["decision"]["action"] for e in events]

    assert run("scanner", "Start the review.", bus.publish("scan.request", {})) == [
        "scan_files",
        "done",
    ]
    found = bus.events(types="file.found")
    assert found
    assert run("reviewer", "Review the file.", found[0].id) == ["check_file", "done"]
    done = bus.publish("review.done", {"path": found[0].payload["path"]})
    assert run("reporter", "A file was reviewed.", done) == ["write_report", "done"]
    assert (tmp_path / "report.md").exists()


def test_resume_rebuilds_the_policy_facts(tiny_runtime: Any, bus: Any, tmp_path: Path) -> None:
    """A resumed run narrows its schema from the same facts as the live run did."""
    from loopbus.agents.run import turn
    from loopbus.agents.run.loop import run_agent
    from loopbus.agents.run.policy import call_key

    ws = _workspace(tmp_path / "ws")
    outcome = run_agent(
        "assistant", "Find secret.txt.", runtime=tiny_runtime, bus=bus, workspace=ws, max_turns=3
    )
    calls = bus.events(run_id=outcome.run_id, types="run.tool_call")
    state, _ = turn.rebuild(bus, outcome.run_id, runtime=tiny_runtime)
    assert state.facts.made == {call_key(c.payload["tool"], c.payload["args"]) for c in calls}
    results = bus.events(run_id=outcome.run_id, types="run.tool_result")
    assert state.facts.succeeded == {r.payload["tool"] for r in results}
    assert calls and state.settings.policy == EXPLORE  # the policy comes from run.task


@pytest.mark.parametrize(
    ("names", "line"),
    [
        (["a.txt"], "(1 file)"),
        (["a.txt", "b.txt"], "(2 files)"),
        (["sub/"], "(1 folder)"),
        (["a.txt", "b/", "c/"], "(1 file, 2 folders)"),
    ],
)
def test_a_listing_ends_with_its_count_which_is_no_path(
    tmp_path: Path, names: list[str], line: str
) -> None:
    from loopbus.agents.tools.core import ToolContext, list_dir
    from loopbus.baml_client import types

    ws = tmp_path / "ws"
    (ws / "docs").mkdir(parents=True)
    for name in names:
        target = ws / "docs" / name.rstrip("/")
        target.mkdir() if name.endswith("/") else target.write_text("x")
    (ws / "docs" / ".hidden").write_text("not counted")
    call = types.ListDir(action="list_dir", path="docs")
    result = list_dir(call, ToolContext("r", "assistant", ws))
    assert result.splitlines() == [*names, line]  # the tool counts; a small model only copies
    facts = RunFacts()
    args = {"action": "list_dir", "path": "docs"}
    _feed(
        facts,
        ("run.tool_call", {"turn": 1, "tool": "list_dir", "args": args}, 1, None),
        ("run.tool_result", {"turn": 1, "tool": "list_dir", "result": result}, 2, 1),
    )
    files = {f"docs/{n}" for n in names if not n.endswith("/")}
    assert facts.seen_files == files
    assert facts.seen_dirs == {"docs", *(f"docs/{n.rstrip('/')}" for n in names if n.endswith("/"))}


def test_an_empty_folder_says_so(tmp_path: Path) -> None:
    from loopbus.agents.tools.core import ToolContext, list_dir
    from loopbus.baml_client import types

    (tmp_path / "empty").mkdir()
    call = types.ListDir(action="list_dir", path="empty")
    assert list_dir(call, ToolContext("r", "assistant", tmp_path)) == "(empty directory)"
