"""The general built-in agents beyond the assistant, with the tiny real model on real bus files:
``watcher`` (its union has Publish, whose map payload constrained decoding must produce) and
``answer`` (its union is only Done, so a live run deterministically ends ``done``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loopbus.agents.builtin import get_agent
from loopbus.agents.run.decide import Decider
from loopbus.agents.run.loop import run_agent
from loopbus.agents.run.replay import Recording, export_run, replay
from loopbus.agents.testing import CountingRuntime
from loopbus.baml_client import types
from loopbus.bus.events import validate_event_type

PUBLISH_TASKS = [
    "Tell the other agents what README.md says.",
    "Publish a finding for src/calc.py.",
    'é<>&" and {braces}',
]


def _member(decider: Decider, action: str) -> dict[str, Any]:
    """The union schema narrowed to one member (same ``$defs``)."""
    members = [m for m in decider.schema["anyOf"] if m["properties"]["action"]["const"] == action]
    assert len(members) == 1
    return {**decider.schema, "anyOf": members}


def _accepts(runtime: Any, schema: dict[str, Any], document: Any) -> bool:
    """Whether the constrained decoder's grammar for ``schema`` accepts ``document`` (as the
    compact JSON it generates): the schema as llguidance enforces it, not as documented."""
    text = document if isinstance(document, str) else json.dumps(document, separators=(",", ":"))
    matcher = runtime.constrainer.compile(schema)
    tokens = runtime.tokenizer.encode(text, add_special_tokens=False)
    return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()


class ForcedChoice(CountingRuntime):
    """The real model with its constrained decoding narrowed to one action of the union (the
    model still generates every token of it): makes a random-weights model choose Publish."""

    def __init__(self, inner: Any, schema: dict[str, Any]) -> None:
        super().__init__(inner)
        self.forced = schema

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        assert kwargs.get("schema") is not None  # the loop asked for constrained decoding
        return super().generate(messages, **{**kwargs, "schema": self.forced})


def test_watcher_union_offers_publish() -> None:
    spec = get_agent("watcher")
    assert spec.function == "Watcher"
    assert spec.tools == ("list_dir", "read_file", "publish", "done")
    payload = _member(Decider("Watcher"), "publish")["anyOf"][0]["properties"]["payload"]
    # The map is bounded (keys, values, entries) so a looping model cannot spin on it.
    assert payload["additionalProperties"] is False and payload["maxProperties"] == 8
    assert list(payload["patternProperties"].values()) == [{"type": "string", "maxLength": 400}]


def test_watcher_schema_accepts_publish_with_a_map_payload(tiny_runtime: Any) -> None:
    schema = Decider("Watcher").schema
    good = {
        "action": "publish",
        "event_type": "file.found",
        "payload": {"path": "src/calc.py", "note": 'TODO "fix" <me>'},
    }
    assert _accepts(tiny_runtime, schema, good)
    assert _accepts(tiny_runtime, schema, {**good, "payload": {}})
    assert _accepts(tiny_runtime, schema, {"action": "done", "summary": "ok"})
    bad_payloads = [
        {"n": 1},  # values are strings
        {"Path": "x"},  # keys are snake_case
        {"k" * 41: "x"},  # ... of at most 40 characters
        {f"k{i}": "x" for i in range(9)},  # at most 8 entries
        {"v": "x" * 401},
        ["x"],
    ]
    for payload in bad_payloads:
        assert not _accepts(tiny_runtime, schema, {**good, "payload": payload}), payload
    for event_type in ["Bad", "two words", "run..x", ""]:  # the bus's event-type rule
        assert not _accepts(tiny_runtime, schema, {**good, "event_type": event_type}), event_type
    assert not _accepts(tiny_runtime, schema, {**good, "extra": "x"})


@pytest.mark.parametrize("task", PUBLISH_TASKS)
def test_constrained_publish_is_schema_valid(tiny_runtime: Any, task: str) -> None:
    decider = Decider("Watcher")
    forced = _member(decider, "publish")
    messages = decider.messages(
        f'<event type="run.task" ts="t">{json.dumps({"task": task}, ensure_ascii=False)}</event>'
    )
    gen = tiny_runtime.generate(messages, schema=forced, max_tokens=3000)
    assert gen.finish_reason == "stop", gen.text[-200:]  # the bounded map lets it finish
    decision = decider.parse(gen.text)
    assert isinstance(decision, types.Publish)
    assert json.loads(gen.text) == decision.model_dump(mode="json")
    assert _accepts(tiny_runtime, decider.schema, gen.text)  # valid under the whole union
    assert validate_event_type(decision.event_type) == decision.event_type
    assert all(isinstance(v, str) for v in decision.payload.values())


def test_live_publish_lands_on_the_bus(tiny_runtime: Any, bus: Any, workspace: Path) -> None:
    trigger = bus.publish("file.changed", {"path": "README.md"}, agent="cli")
    runtime = ForcedChoice(tiny_runtime, _member(Decider("Watcher"), "publish"))
    outcome = run_agent(
        "watcher",
        "README.md changed: tell the other agents what it says.",
        runtime=runtime,
        bus=bus,
        workspace=workspace,
        max_turns=1,
        caused_by=trigger,
    )
    assert outcome.kind == "max_turns" and runtime.calls == 1
    events = bus.events(run_id=outcome.run_id)
    types_ = [e.event_type for e in events]
    decision = next(e for e in events if e.event_type == "run.decision").payload["decision"]
    assert decision["action"] == "publish"
    published = [e for e in events if not e.event_type.startswith("run.")]
    assert len(published) == 1, types_
    event = published[0]
    assert event.event_type == decision["event_type"] and event.payload == decision["payload"]
    assert event.run_id == outcome.run_id and event.agent == "watcher"
    assert event.caused_by == trigger  # outputs are caused by the run's trigger
    assert types_ == [
        "run.task",
        "run.model_call",
        "run.decision",
        "run.tool_call",
        decision["event_type"],
        "run.tool_result",
        "run.outcome",
    ]
    result = events[types_.index("run.tool_result")].payload
    assert result["tool"] == "publish" and result["result"] == f"published {event.event_type}"
    # The recording replays (Publish re-executed on the scratch bus, compared event by event).
    recording = Recording.from_xml(export_run(bus, outcome.run_id))
    assert [e.id for e in recording.context] == [trigger]
    report = replay(recording, workspace=workspace)
    assert report.ok, report.diff


def test_publish_without_a_trigger_is_caused_by_the_task(tiny_runtime: Any, bus: Any) -> None:
    runtime = ForcedChoice(tiny_runtime, _member(Decider("Watcher"), "publish"))
    outcome = run_agent("watcher", "Publish what you see.", runtime=runtime, bus=bus, max_turns=1)
    events = bus.events(run_id=outcome.run_id)
    published = [e for e in events if not e.event_type.startswith("run.")]
    assert len(published) == 1 and published[0].caused_by == events[0].id  # the run.task


def test_answer_agent_ends_done(tiny_runtime: Any, bus: Any) -> None:
    assert get_agent("answer").tools == ("done",)
    runtime = CountingRuntime(tiny_runtime)
    outcome = run_agent("answer", "What is 2 + 2?", runtime=runtime, bus=bus, max_turns=3)
    assert outcome.kind == "done" and outcome.reason is None and runtime.calls == 1
    events = bus.events(run_id=outcome.run_id)
    assert [e.event_type for e in events] == [
        "run.task",
        "run.model_call",
        "run.decision",
        "run.outcome",
    ]
    raw = events[1].payload["raw"]
    assert outcome.summary == Decider("Answer").parse(raw).summary
    assert outcome.summary == events[2].payload["decision"]["summary"]
    outcomes = bus.events(types="run.outcome")
    assert len(outcomes) == 1 and outcomes[0].payload["kind"] == "done"
    assert outcomes[0].payload["summary"] == outcome.summary and outcomes[0].payload["turns"] == 1
