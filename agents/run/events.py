"""The typed run events: one definition per event a run publishes on the bus.

A run is recorded on the bus as events of the types in :class:`RunEventType` (the ``run.``
namespace, reserved for the loop: tools cannot publish in it). Each type has a pydantic model of
its payload here (:data:`EVENT_MODELS`), with the type attached to the class (``Task.type``);
:func:`read_run_event` turns a bus event (or a type and its payload) into that typed object and
raises :class:`MalformedRunEvent`, saying what is wrong, for a forged or corrupt payload.

Reading is as lenient as the loop always was: only the keys the loop reads back are checked
(present, with their JSON type; ``bool`` is no ``int``, a ``turn`` is never negative, an outcome
kind is one of :data:`OUTCOME_KINDS`); the other documented keys are typed ``Any`` and default
to None, and unknown keys are kept (``model_extra``). Every payload also carries ``ts``, the
loop's clock (ISO-8601 UTC with ms) that the event log renders. Which events are in a
transaction, and what each is ``caused_by``, is documented in :mod:`loopbus.agents.run.state`.

This module is imported by the observe commands: pydantic only, nothing heavy.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from loopbus.agents.errors import AgentError

__all__ = [
    "EVENT_MODELS",
    "OUTCOME_KINDS",
    "RUN_NAMESPACE",
    "Decision",
    "LlmCall",
    "MalformedRunEvent",
    "ModelCall",
    "OutcomeEvent",
    "RunError",
    "RunEvent",
    "RunEventType",
    "Task",
    "ToolCall",
    "ToolResult",
    "is_run_event",
    "malformed",
    "read_payload",
    "read_run_event",
]

#: Every run event type starts with it; the whole namespace is reserved for the loop.
RUN_NAMESPACE = "run."
OUTCOME_KINDS = ("done", "budget_exceeded", "max_turns", "failed")


class RunEventType(StrEnum):
    """The type of each event a run publishes (a ``str``: compares equal to the bus's text)."""

    TASK = "run.task"
    MODEL_CALL = "run.model_call"
    DECISION = "run.decision"
    TOOL_CALL = "run.tool_call"
    TOOL_RESULT = "run.tool_result"
    LLM_CALL = "run.llm_call"
    ERROR = "run.error"
    OUTCOME = "run.outcome"


_RUN_TYPES: frozenset[str] = frozenset(RunEventType)


def is_run_event(event_type: str) -> bool:
    """Whether ``event_type`` is one of :class:`RunEventType` (``"x" in RunEventType`` raises
    on Python 3.11 for a plain string)."""
    return event_type in _RUN_TYPES


class MalformedRunEvent(AgentError):
    """A run event's payload is not what the loop publishes (a forged or corrupt event).

    ``problem`` says what is wrong (``it has no 'kind'``, ``its 'turn' is a JSON string``);
    callers put it in their own context (``its run.outcome (event 7) is malformed: ...``).
    """

    def __init__(self, event_type: str, problem: str) -> None:
        super().__init__(f"{event_type} is malformed: {problem}")
        self.event_type = event_type
        self.problem = problem


class RunEvent(BaseModel):
    """A run event's payload. Subclasses set ``type``; unknown keys are kept as extras."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: ClassVar[RunEventType]
    #: The loop's clock when it was published (every emitted payload has it).
    ts: Any = None

    def payload(self) -> dict[str, Any]:
        """The JSON payload to publish: the keys that were set, extras included."""
        return self.model_dump(mode="json", exclude_unset=True)


class Task(RunEvent):
    """``run.task``: the run's first event (pinned in its context), caused_by its trigger.

    ``settings`` is :class:`loopbus.agents.run.state.RunSettings` as JSON: everything needed to
    run it again (``sandbox``, the run's RunPython limits, only when they are not the agent's
    default). ``unrecorded`` (true) marks a stand-in for a task the bus refused.
    """

    type: ClassVar[RunEventType] = RunEventType.TASK
    task: StrictStr
    settings: dict[str, Any]


class ModelCall(RunEvent):
    """``run.model_call``: one answer of the model to the loop's prompt for turn ``turn``.

    ``raw`` is the model's text (what a replay answers with), ``prompt_sha256`` the hash a
    replay checks, ``counts`` the token count of every prompt tried ({sha: tokens}), ``elided``
    how many events elision dropped; ``parse_error`` is set when the answer did not parse.
    Timings and token counts (``prefill_s``, ``decode_s``, ``completion_tokens``, ...) and the
    recorded prompt (``prompt_template`` / ``prompt_messages``) are for people reading it.
    """

    type: ClassVar[RunEventType] = RunEventType.MODEL_CALL
    turn: StrictInt = Field(ge=0)
    prompt_sha256: Any = None
    prompt_tokens: Any = None
    counts: Any = None
    elided: Any = None
    raw: Any = None
    finish_reason: Any = None
    completion_tokens: Any = None
    cached_tokens: Any = None
    prefill_s: Any = None
    decode_s: Any = None
    parse_error: Any = None
    schema_sha256: Any = None


class Decision(RunEvent):
    """``run.decision``: the parsed answer of turn ``turn`` as JSON (``decision["action"]``
    names the tool, or ``done``); published with what it leads to."""

    type: ClassVar[RunEventType] = RunEventType.DECISION
    turn: StrictInt = Field(ge=0)
    decision: dict[str, Any]


class ToolCall(RunEvent):
    """``run.tool_call``: a tool about to run, committed BEFORE it runs (so a crash leaves a
    call without result: redone if ``idempotent``, else an ``unknown_outcome`` error)."""

    type: ClassVar[RunEventType] = RunEventType.TOOL_CALL
    turn: StrictInt = Field(ge=0)
    tool: StrictStr
    args: dict[str, Any]
    idempotent: StrictBool


class ToolResult(RunEvent):
    """``run.tool_result``: what a tool returned (any JSON, shaped to the run's limit),
    caused_by its ``run.tool_call``."""

    type: ClassVar[RunEventType] = RunEventType.TOOL_RESULT
    tool: StrictStr
    result: Any
    turn: Any = None


class LlmCall(RunEvent):
    """``run.llm_call``: a model call a running tool made (the sandbox's ``llm()``), caused_by
    the tool call: ``prompt_sha256``, ``prompt`` (its first 2,000 characters), and ``raw`` (the
    answer) or ``error`` ({type, message}) that a replay raises again."""

    type: ClassVar[RunEventType] = RunEventType.LLM_CALL
    turn: StrictInt = Field(ge=0)
    prompt_sha256: Any = None
    prompt: Any = None
    raw: Any = None
    error: Any = None
    prompt_tokens: Any = None
    completion_tokens: Any = None
    finish_reason: Any = None


class RunError(RunEvent):
    """``run.error``: what the model sees went wrong: ``kind`` parse (its answer did not
    parse), tool (the tool failed, caused_by its call) or unknown_outcome (a call cut short by
    a crash), with the ``tool`` when there is one."""

    type: ClassVar[RunEventType] = RunEventType.ERROR
    error: StrictStr
    tool: StrictStr | None = None
    kind: StrictStr | None = None
    turn: Any = None


class OutcomeEvent(RunEvent):
    """``run.outcome``: how the run ended, its last loop event, caused_by its trigger: ``kind``
    done (with ``summary``), budget_exceeded, max_turns or failed (with ``reason``), after
    ``turns`` turns. ``counts`` and ``model_error`` ({type, message, prompt_sha256}) let a
    replay reach the same end; ``unrecorded`` lists the event types the bus refused."""

    type: ClassVar[RunEventType] = RunEventType.OUTCOME
    kind: Literal["done", "budget_exceeded", "max_turns", "failed"]
    summary: StrictStr | None = None
    reason: StrictStr | None = None
    turns: Any = None
    counts: Any = None
    model_error: Any = None


#: The payload model of each run event type.
EVENT_MODELS: dict[RunEventType, type[RunEvent]] = {
    model.type: model
    for model in (Task, ModelCall, Decision, ToolCall, ToolResult, LlmCall, RunError, OutcomeEvent)
}


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _problem(model: type[RunEvent], exc: ValidationError) -> str:
    """The first thing wrong, in the loop's words: missing keys and wrong JSON types (in field
    order) before an unknown outcome kind, before a negative turn."""
    order = list(model.model_fields)
    ranked: list[tuple[int, int, str]] = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else ""
        value = err.get("input")
        if err["type"] == "missing":
            rank, text = 0, f"it has no {key!r}"
        elif err["type"] == "literal_error" and isinstance(value, str):
            kinds = ", ".join(OUTCOME_KINDS)
            rank, text = 1, f"its {key} {_clip(repr(value), 80)} is none of {kinds}"
        elif err["type"] == "greater_than_equal" and isinstance(value, int):
            rank, text = 2, f"its {key} {value} is negative"
        else:
            rank, text = 0, f"its {key!r} is a JSON {_json_type(value)}"
        ranked.append((rank, order.index(key) if key in order else len(order), text))
    return min(ranked)[2]


E = TypeVar("E", bound=RunEvent)


def read_payload(model: type[E], payload: Any) -> E:
    """``payload`` read as ``model`` (the payload of a ``model.type`` event);
    :class:`MalformedRunEvent` if it is not one."""
    if not isinstance(payload, dict):
        raise MalformedRunEvent(
            str(model.type), f"its payload is a JSON {_json_type(payload)}, not an object"
        )
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise MalformedRunEvent(str(model.type), _problem(model, exc)) from None


def read_run_event(event_type: Any, payload: Any = None) -> RunEvent:
    """The typed payload of a run event: ``read_run_event(bus_event)`` (anything with
    ``event_type`` and ``payload``, e.g. :class:`loopbus.bus.Event`) or
    ``read_run_event(type, payload)``.

    Raises :class:`MalformedRunEvent` when the payload is not an object or misses or mistypes
    a key the loop reads, and when the type is not a run event type.
    """
    if not isinstance(event_type, str):
        event_type, payload = event_type.event_type, event_type.payload
    if not is_run_event(event_type):
        raise MalformedRunEvent(
            str(event_type), f"it is not a run event (one of {', '.join(RunEventType)})"
        )
    return read_payload(EVENT_MODELS[RunEventType(event_type)], payload)


def malformed(event_type: str, payload: Any) -> str | None:
    """What is wrong with a recorded run event's payload (see :func:`read_run_event`), or None
    when the loop can read it back. Events of other types are never malformed."""
    if not is_run_event(event_type):
        return None
    try:
        read_run_event(event_type, payload)
    except MalformedRunEvent as exc:
        return exc.problem
    return None
