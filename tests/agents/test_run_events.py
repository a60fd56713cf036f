"""The typed run events (loopbus.agents.run.events): one model per event type, payloads round-trip,
every recorded payload reads back, malformed ones give a clear error, and no other module names a
run event type by its string."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopbus.agents.errors import AgentError
from loopbus.agents.run.events import (
    EVENT_MODELS,
    OUTCOME_KINDS,
    RUN_NAMESPACE,
    Decision,
    LlmCall,
    MalformedRunEvent,
    ModelCall,
    OutcomeEvent,
    RunError,
    RunEvent,
    RunEventType,
    Task,
    ToolCall,
    ToolResult,
    is_run_event,
    malformed,
    read_payload,
    read_run_event,
)

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = sorted((ROOT / "tests" / "runs").glob("*.xml"))

# ---------------------------------------------------------------------------- strategies

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
texts = st.text(max_size=40)
turns = st.integers(0, 10**6)
maybe_texts = st.none() | texts
# Extra keys (the loop adds ones the model does not name: counts, unrecorded, prompt_messages...)
extras = st.dictionaries(st.from_regex(r"x_[a-z_]{1,8}", fullmatch=True), json_values, max_size=3)


def _with(model: type[RunEvent], fields: dict[str, st.SearchStrategy[Any]]) -> Any:
    """A strategy of ``model`` objects: the required fields, a subset of the optional ones
    (so both set and unset defaults occur), ``ts`` and extra keys."""
    optional = {k: v for k, v in fields.items() if not model.model_fields[k].is_required()}
    required = {k: v for k, v in fields.items() if k not in optional}

    @st.composite
    def build(draw: Any) -> RunEvent:
        values = {k: draw(v) for k, v in required.items()}
        for key in sorted(optional):
            if draw(st.booleans()):
                values[key] = draw(optional[key])
        if draw(st.booleans()):
            values["ts"] = draw(texts)
        values.update(draw(extras))
        return model(**values)

    return build()


EVENTS: dict[RunEventType, Any] = {
    RunEventType.TASK: _with(Task, {"task": texts, "settings": json_objects}),
    RunEventType.MODEL_CALL: _with(
        ModelCall,
        {
            "turn": turns,
            "prompt_sha256": texts,
            "prompt_tokens": st.integers(0, 10**6),
            "counts": st.dictionaries(texts, st.integers(0, 10**6), max_size=3),
            "elided": st.integers(0, 100),
            "raw": texts,
            "finish_reason": maybe_texts,
            "completion_tokens": st.none() | st.integers(0, 10**4),
            "prefill_s": st.none() | st.floats(0, 100),
            "parse_error": texts,
            "schema_sha256": texts,
        },
    ),
    RunEventType.DECISION: _with(Decision, {"turn": turns, "decision": json_objects}),
    RunEventType.TOOL_CALL: _with(
        ToolCall, {"turn": turns, "tool": texts, "args": json_objects, "idempotent": st.booleans()}
    ),
    RunEventType.TOOL_RESULT: _with(
        ToolResult, {"tool": texts, "result": json_values, "turn": turns}
    ),
    RunEventType.LLM_CALL: _with(
        LlmCall,
        {
            "turn": turns,
            "prompt_sha256": texts,
            "prompt": texts,
            "raw": texts,
            "error": json_objects,
            "prompt_tokens": st.integers(0, 10**4),
        },
    ),
    RunEventType.ERROR: _with(
        RunError,
        {
            "error": texts,
            "tool": maybe_texts,
            "kind": st.none() | st.sampled_from(["parse", "tool", "unknown_outcome"]),
            "turn": turns,
        },
    ),
    RunEventType.OUTCOME: _with(
        OutcomeEvent,
        {
            "kind": st.sampled_from(OUTCOME_KINDS),
            "summary": maybe_texts,
            "reason": maybe_texts,
            "turns": turns,
            "counts": st.dictionaries(texts, st.integers(0, 10**6), max_size=2),
            "model_error": json_objects,
        },
    ),
}
any_event = st.one_of(*EVENTS.values())


# ---------------------------------------------------------------------------- the models


def test_every_event_type_has_a_documented_model() -> None:
    assert set(EVENTS) == set(RunEventType)  # the round-trip strategies cover every type
    assert set(EVENT_MODELS) == set(RunEventType)
    for event_type, model in EVENT_MODELS.items():
        assert model.type is event_type and issubclass(model, RunEvent)
        assert model.__doc__ and str(event_type) in model.__doc__, model
        assert str(event_type).startswith(RUN_NAMESPACE)
    assert len({m.__name__ for m in EVENT_MODELS.values()}) == len(RunEventType)


def test_the_types_are_the_bus_strings() -> None:
    assert RunEventType.TASK == "run.task" and f"{RunEventType.OUTCOME}" == "run.outcome"
    assert {RunEventType.DECISION: 1}.get("run.decision") == 1  # dict keys match bus text
    assert type(str(RunEventType.ERROR)) is str
    assert is_run_event("run.llm_call") and is_run_event(RunEventType.TOOL_CALL)
    assert not is_run_event("run.task.extra") and not is_run_event("finding")


@settings(max_examples=300, deadline=None)
@given(any_event)
def test_a_model_round_trips_through_its_json_payload(event: RunEvent) -> None:
    payload = json.loads(json.dumps(event.payload()))
    again = read_run_event(str(event.type), payload)
    assert type(again) is type(event)
    assert again == event
    assert again.payload() == payload
    assert malformed(str(event.type), payload) is None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(RunEventType)), json_values | json_objects)
def test_any_json_payload_reads_back_or_is_malformed_never_crashes(
    event_type: RunEventType, payload: Any
) -> None:
    try:
        typed = read_run_event(str(event_type), payload)
    except MalformedRunEvent as exc:
        assert exc.problem and malformed(str(event_type), payload) == exc.problem
        assert str(exc) == f"{event_type} is malformed: {exc.problem}"
    else:
        assert typed.type is event_type and malformed(str(event_type), payload) is None


class _BusEvent:
    """The two attributes read_run_event reads of a bus event."""

    def __init__(self, event_type: str, payload: Any) -> None:
        self.event_type, self.payload = event_type, payload


def test_a_bus_event_reads_as_its_typed_payload() -> None:
    payload = {"turn": 2, "tool": "list_dir", "args": {"path": "."}, "idempotent": True}
    call = read_run_event(_BusEvent("run.tool_call", {**payload, "ts": "t"}))
    assert isinstance(call, ToolCall) and call.args == {"path": "."} and call.ts == "t"
    outcome = read_payload(OutcomeEvent, {"kind": "done", "summary": "ok", "counts": {"a": 1}})
    assert outcome.summary == "ok" and outcome.reason is None and outcome.counts == {"a": 1}
    error = read_run_event("run.error", {"error": "boom", "kind": "parse", "extra": [1]})
    assert isinstance(error, RunError) and error.model_extra == {"extra": [1]}


MALFORMED = [
    ("run.outcome", {}, "it has no 'kind'"),
    ("run.outcome", {"kind": "pwned"}, "its kind 'pwned' is none of done, budget_exceeded"),
    ("run.outcome", {"kind": 3}, "its 'kind' is a JSON number"),
    ("run.outcome", {"kind": "done", "summary": 5}, "its 'summary' is a JSON number"),
    ("run.decision", {"turn": 1}, "it has no 'decision'"),
    ("run.decision", {"turn": 1, "decision": []}, "its 'decision' is a JSON array"),
    ("run.model_call", {"turn": "1"}, "its 'turn' is a JSON string"),
    ("run.model_call", {"turn": True}, "its 'turn' is a JSON boolean"),
    ("run.model_call", {"turn": 1.0}, "its 'turn' is a JSON number"),
    ("run.llm_call", {"turn": -1}, "its turn -1 is negative"),
    ("run.tool_call", {"turn": 1}, "it has no 'tool'"),
    ("run.tool_call", {"turn": -1}, "it has no 'tool'"),  # missing keys come first
    ("run.tool_call", {"turn": 1, "tool": "t", "args": {}, "idempotent": 1}, "'idempotent'"),
    ("run.tool_result", [1, 2], "its payload is a JSON array, not an object"),
    ("run.tool_result", {"tool": "t"}, "it has no 'result'"),
    ("run.error", {"kind": "parse"}, "it has no 'error'"),
    ("run.error", {"error": "e", "tool": 1}, "its 'tool' is a JSON number"),
    ("run.task", "just text", "its payload is a JSON string, not an object"),
    ("run.task", {"task": "t"}, "it has no 'settings'"),
    ("run.task", {"task": None, "settings": {}}, "its 'task' is a JSON null"),
]


@pytest.mark.parametrize(("event_type", "payload", "expected"), MALFORMED)
def test_a_malformed_payload_is_a_clear_error(event_type: str, payload: Any, expected: str) -> None:
    with pytest.raises(MalformedRunEvent) as info:
        read_run_event(event_type, payload)
    assert isinstance(info.value, AgentError)  # the CLI maps it to `Error: ...`
    assert expected in info.value.problem, info.value.problem
    assert str(info.value).startswith(f"{event_type} is malformed: ")
    assert malformed(event_type, payload) == info.value.problem


def test_other_types_are_never_malformed_but_are_not_run_events() -> None:
    assert malformed("finding", [1]) is None and malformed("run.task.extra", None) is None
    with pytest.raises(MalformedRunEvent, match="it is not a run event"):
        read_run_event("finding", {})


# ---------------------------------------------------------------------------- recorded payloads


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_every_recorded_payload_reads_back_unchanged(path: Path) -> None:
    from loopbus.agents.run.replay import load_recording

    recording = load_recording(path)
    seen = set()
    for event in recording.events:
        if is_run_event(event.type):
            typed = read_run_event(event.type, event.payload)
            assert typed.type == event.type
            assert typed.payload() == event.payload  # nothing dropped or changed
            seen.add(typed.type)
    assert {RunEventType.TASK, RunEventType.MODEL_CALL, RunEventType.OUTCOME} <= seen


def test_a_fresh_run_publishes_only_readable_run_events_as_plain_strings(
    bus: Any, workspace: Path
) -> None:
    from loopbus.agents.run.loop import run_agent
    from loopbus.agents.run.replay import Recording
    from loopbus.models.scripted import ScriptedRuntime

    runtime = ScriptedRuntime(
        [
            {"action": "list_dir", "path": "."},
            "this is not a decision",
            {"action": "read_file", "path": "README.md"},
            {"action": "done", "summary": "read it"},
        ]
    )
    delivered: list[Any] = []
    outcome = run_agent(
        "assistant",
        "What is here?",
        runtime=runtime,
        bus=bus,
        workspace=workspace,
        run_id="r-typed",
        max_turns=6,
        budget=1.0,
        on_event=delivered.append,
    )
    assert outcome.kind == "done", outcome
    assert delivered and all(type(e.event_type) is str for e in delivered)  # no enum leaks
    events = bus.events(run_id="r-typed")
    typed = [read_run_event(e) for e in events]
    assert {t.type for t in typed} == set(RunEventType) - {RunEventType.LLM_CALL}
    for event, one in zip(events, typed, strict=True):
        assert one.payload() == event.payload and isinstance(one.ts, str)
    assert [t.kind for t in typed if isinstance(t, RunError)] == ["parse"]
    # ... and the run's recording reads back the same way (what replay and export check).
    recording = Recording.from_bus(bus, "r-typed")
    assert Recording.model_validate_json(recording.model_dump_json()).checked() == recording


# ---------------------------------------------------------------------------- the guard


_RUN_TYPE_TEXT = re.compile(r"^run\.[a-z_]+$")


def run_type_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string constant in ``path`` that is a run event type's text."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _RUN_TYPE_TEXT.match(node.value)
    ]


def test_no_module_but_events_names_a_run_event_type_by_its_string() -> None:
    agents = ROOT / "agents"
    found = {
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in sorted(agents.rglob("*.py"))
        if path != agents / "run" / "events.py"
        for line, text in run_type_literals(path)
    }
    assert not found, "use loopbus.agents.run.events.RunEventType:\n" + "\n".join(sorted(found))
    # The scan finds them where they are defined (it can fail), and SQL patterns pass.
    defined = {text for _, text in run_type_literals(agents / "run" / "events.py")}
    assert defined == {str(t) for t in RunEventType}
    assert not _RUN_TYPE_TEXT.match("run.%") and not _RUN_TYPE_TEXT.match("SELECT 'run.task'")
