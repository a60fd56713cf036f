"""BAML boundary: request rendering, the union schema and parsing what the schema forces."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopbus.agents.run.decide import Decider, DecisionParseError, prompt_hash


def test_messages_come_from_the_baml_request() -> None:
    decider = Decider("Assistant")
    messages = decider.messages('<event type="run.task" ts="t">{"task":"q"}</event>')
    # System rules, worked examples as user/assistant turns, then the run's log as the last turn.
    roles = [m["role"] for m in messages]
    assert roles[0] == "system" and roles[-1] == "user"
    assert set(roles[1:-1]) <= {"user", "assistant"}
    assert "read_file" in messages[0]["content"]
    assert messages[-1]["content"] == '<event type="run.task" ts="t">{"task":"q"}</event>'
    assert prompt_hash(messages) == prompt_hash(
        decider.messages('<event type="run.task" ts="t">{"task":"q"}</event>')
    )
    assert prompt_hash(messages) != prompt_hash(decider.messages("other"))


def test_union_schema_is_discriminated_by_action() -> None:
    schema = Decider("Assistant").schema
    consts = [m["properties"]["action"]["const"] for m in schema["anyOf"]]
    assert consts == ["read_file", "list_dir", "done"]
    assert all(m["additionalProperties"] is False for m in schema["anyOf"])
    assert Decider("Coder").actions() == ["run_python", "done"]


def test_parse_returns_generated_types() -> None:
    from loopbus.baml_client import types

    decider = Decider("Assistant")
    assert isinstance(decider.parse('{"action":"read_file","path":"a"}'), types.ReadFile)
    # Small models wrap JSON in prose and fences; BAML's parser copes.
    fenced = 'Sure!\n```json\n{"action": "done", "summary": "42"}\n```'
    assert decider.parse(fenced) == types.Done(action="done", summary="42")
    for bad in ["hello", '{"action":"list_dir"}', '{"action":"run_python","code":"1"}']:
        with pytest.raises(DecisionParseError):
            decider.parse(bad)
    assert decider.load({"action": "list_dir", "path": "."}) == types.ListDir(
        action="list_dir", path="."
    )


def test_unknown_function() -> None:
    from loopbus.agents.run.decide import UnknownFunction

    with pytest.raises(UnknownFunction, match="make generate"):
        Decider("NoSuchFunction")


@pytest.mark.parametrize("function", ["Assistant", "Coder", "Watcher", "Answer"])
def test_constrained_output_always_parses(tiny_runtime: Any, function: str) -> None:
    decider = Decider(function)
    seen = set()
    for i, task in enumerate(["list files", "read README.md", "answer 42", 'é<>&"', "x" * 50]):
        messages = decider.messages(f'<event type="run.task" ts="{i}">{{"task":"{task}"}}</event>')
        gen = tiny_runtime.generate(messages, schema=decider.schema, max_tokens=96)
        decision = decider.parse(gen.text)
        seen.add(type(decision).__name__)
    assert seen <= {c.__name__ for c in decider.classes}


@given(
    st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",))), min_size=1, max_size=3)
)
@settings(max_examples=60, deadline=None)
def test_cached_template_renders_exactly_like_baml(parts: list[str]) -> None:
    from loopbus.agents.run.context import LogEvent, render_log

    decider = Decider("Assistant")
    assert decider._template is not None  # the fast path is in use
    events = render_log([LogEvent("run.tool_result", p, {"result": p}) for p in parts])
    assert decider.messages(events) == decider.render(events)
    for raw in [" padded ", "x\n", "{{ events }}"]:
        assert decider.messages(raw) == decider.render(raw)
