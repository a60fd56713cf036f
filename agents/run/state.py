"""A run's state and its recording on the bus.

Every event of a run is published on the bus as it happens, with ``run_id`` and the agent name,
so the bus alone can rebuild the run (:meth:`RunState.rebuild`) — durable resume and replay rely
on that. Event types and payloads (all plain JSON; BAML objects are converted with
``model_dump`` at this boundary), each typed in :mod:`loopbus.agents.run.events`:

=================  ==================================================================  =========
type               payload                                                             caused_by
=================  ==================================================================  =========
run.task           task, settings (agent, function, max_turns, budget, elide, ...)     trigger
run.model_call     turn, prompt_sha256, prompt_tokens, counts {sha: tokens}, elided,   -
                   raw (the model's text), timings
run.decision       turn, decision (the parsed object as JSON)                          -
run.tool_call      turn, tool, args, idempotent  (published BEFORE the tool runs)      see below
run.tool_result    turn, tool, result            (published AFTER it ran)              tool_call
run.llm_call       turn, prompt_sha256, prompt (first 2,000 characters), raw or error  tool_call
                   (a model call a tool made: the sandbox's llm() / summarize())
run.error          turn, error, kind (parse | tool | unknown_outcome), [tool]          call/-
run.outcome        kind, summary, reason, turns                                        trigger
<other types>      what the Publish tool emitted                                       trigger
=================  ==================================================================  =========

Transactions (one durable commit each): ``run.task``; then per turn either
``model_call + decision + tool_call`` (the call is on the bus before the tool runs) followed by
``tool_result`` or ``error``, or ``model_call + decision + outcome`` (Done), or
``model_call + error [+ outcome]`` (unparseable answer). :meth:`RunState.stage` holds the model
call and decision until the dispatch publishes them with what follows; a crash in between loses
only that unrecorded answer (the model is asked again on resume). A ``run.tool_call`` is
caused_by its decision only when the decision was committed earlier (a resumed run); in the
same transaction the decision's id is not known yet, and it is the event right before the call.

Every ``run.*`` payload also has ``ts``: the loop's clock, which the event log renders (so the
context rebuilt from the bus is byte-identical, and replay can stamp the recorded times).
Only task, decision, tool_result and error events are part of the model's context.

A run event the bus refuses to store (over its payload limit, or text that is not valid
UTF-8 such as a lone surrogate in a model answer) would crash the agent on every retry: instead
:meth:`RunState.emit` ends the run ``failed`` with a small ``run.outcome`` saying what could not
be recorded (with a stand-in ``run.task`` when the task itself was refused) and raises
:class:`RunUnrecordable`, which :func:`loopbus.agents.run.loop.run` turns into that outcome.
:func:`malformed` (from :mod:`loopbus.agents.run.events`, where each event type has its typed
payload model) checks the shape of a recorded run event, so reading a run back never crashes on
a forged or corrupt one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidatorFunctionWrapHandler, field_validator

from loopbus.agents.errors import AgentError, SandboxConfigError
from loopbus.agents.run.context import EventLog, LogEvent
from loopbus.agents.run.events import OUTCOME_KINDS as OUTCOME_KINDS  # re-exported
from loopbus.agents.run.events import RUN_NAMESPACE, RunEventType
from loopbus.agents.run.events import malformed as malformed  # re-exported
from loopbus.agents.run.policy import Policy, RunFacts
from loopbus.agents.sandbox.types import SandboxLimits

OutcomeKind = Literal["done", "budget_exceeded", "max_turns", "failed"]
CONTEXT_TYPES = frozenset(
    {RunEventType.TASK, RunEventType.DECISION, RunEventType.TOOL_RESULT, RunEventType.ERROR}
)
#: Longest reason of an outcome written because something could not be recorded.
MAX_REASON_CHARS = 1000


class RunUnrecordable(AgentError):
    """A run event could not be stored on the bus; the run has ended ``failed`` (its
    ``state.outcome``) with the reason recorded in a small ``run.outcome``."""


class Outcome(BaseModel):
    """How a run ended: exactly one of done(summary) | budget_exceeded | max_turns | failed(reason)."""

    kind: OutcomeKind
    run_id: str
    summary: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "done"


class RunSettings(BaseModel):
    """Everything needed to re-run a run, recorded in its ``run.task`` event."""

    agent: str
    function: str
    #: The reference the agent resolves from (loopbus.agents.builtin.get_agent) when it is not
    #: ``agent``: a chain agent configured under another name than its ``kind``.
    agent_ref: str | None = None
    max_turns: int = Field(default=12, ge=0)
    budget: float = Field(default=0.4, gt=0, le=1)
    elide: bool = False
    workspace: str | None = None
    model: str = ""
    context_window: int = 0
    supports_schema: bool = False
    max_tokens: int = 256
    max_parse_failures: int = 2
    max_result_chars: int = 4000
    policy: Policy = Field(default_factory=Policy)  # loopbus.agents.run.policy: the per-turn schema
    #: The run's RunPython sandbox limits when they are not its agent's default (None: the
    #: agent's ``Agent(sandbox=...)``); left out of the recorded settings when None, so
    #: ordinary runs record what they always did.
    sandbox: SandboxLimits | None = Field(default=None, exclude_if=lambda value: value is None)

    @field_validator("sandbox", mode="wrap")
    @classmethod
    def _limits(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # SandboxLimits checks its ranges in __post_init__: a forged recording's limits must
        # be a validation error (the run is malformed), not a crash.
        try:
            return handler(value)
        except SandboxConfigError as exc:
            raise ValueError(str(exc)) from None


_second: tuple[int, str] = (-1, "")  # the last whole second seen and its formatted text


def utc_now() -> str:
    """Now as ISO-8601 UTC with milliseconds, like the bus's ``created_at``."""
    global _second
    now = time.time()
    cached = _second  # one read: another thread may replace it meanwhile
    if cached[0] != int(now):  # strftime once per second, not once per event
        cached = (int(now), time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(int(now))))
        _second = cached
    return f"{cached[1]}{int((now - cached[0]) * 1000):03d}Z"


def context_view(event_type: str, payload: Any) -> Any:
    """What the model sees of a bus event, or None when the event is not part of its context."""
    if event_type not in CONTEXT_TYPES:
        return None
    if event_type == RunEventType.TASK:
        return {"task": payload["task"]}
    if event_type == RunEventType.DECISION:
        return payload["decision"]
    if event_type == RunEventType.TOOL_RESULT:
        return {"tool": payload["tool"], "result": payload["result"]}
    view = {"error": payload["error"]}
    if payload.get("tool"):
        view["tool"] = payload["tool"]
    return view


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters and safe to store (lone surrogates escaped)."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class PendingCall:
    """A ``run.tool_call`` whose result is not recorded yet."""

    event_id: int
    tool: str
    args: dict[str, Any]
    idempotent: bool


@dataclass
class RunState:
    """The mutable state of one run; :mod:`loopbus.agents.run.loop` advances it one turn at a time."""

    run_id: str
    task: str
    settings: RunSettings
    bus: Any  # bus.SyncBus
    trigger: int | None = None  # the event that started the run (outputs are caused_by it)
    task_event_id: int | None = None
    log: EventLog = field(default_factory=EventLog)
    turn: int = 0
    parse_failures: int = 0
    pending: BaseModel | None = None  # a recorded decision not executed yet
    pending_id: int | None = None  # its run.decision's id, once committed
    pending_call: PendingCall | None = None
    outcome: Outcome | None = None
    on_event: Callable[[Any], None] | None = None
    # replay maps the n-th event of the run (and its type) to the recorded timestamp, so the
    # prompts hash the same
    stamp: Callable[[int, str], str] | None = None
    emitted: int = 0
    cache: object | None = None
    ctx: Any = None  # loopbus.agents.tools.core.ToolContext, set when the run starts
    staged: list[tuple[str, Any, int | None]] = field(default_factory=list)  # see stage()
    interrupted: BaseException | None = None  # what on_event raised (ends the run's process)
    facts: RunFacts = field(default_factory=RunFacts)  # what the decoding policy needs
    malformed: str | None = (
        None  # set by loopbus.agents.run.turn.rebuild: why the run cannot continue
    )

    @property
    def origin(self) -> int | None:
        """The id outputs and the outcome are caused_by: the trigger, else the task event."""
        return self.trigger if self.trigger is not None else self.task_event_id

    def stage(self, *items: tuple[str, Any, int | None]) -> None:
        """Hold ``(type, payload, caused_by)`` events for the next :meth:`emit` (same commit)."""
        self.staged.extend(items)

    def emit(self, *items: tuple[str, Any, int | None]) -> list[Any]:
        """Publish the staged events and ``items`` in one transaction; update the context.

        ``run.*`` payloads get a ``ts`` (the loop's clock, ISO-8601 UTC with ms): the event log
        renders it, so the bus alone rebuilds the exact context, and a replay stamps the
        recorded one. The returned :class:`bus.Event` objects are built here (no read-back);
        their ``created_at`` is that ts, within a millisecond or so of the stored column.
        """
        from loopbus.bus.errors import InvalidPayload, PayloadTooLarge

        if self.staged:
            items, self.staged = (*self.staged, *items), []
        stamped = self._stamp(items)
        try:
            events = self._publish(stamped)
        except (PayloadTooLarge, InvalidPayload) as exc:
            if not any(kind.startswith(RUN_NAMESPACE) for kind, *_ in stamped):
                raise  # a tool's own output: the tool gets the error, the run goes on
            raise self._unrecordable([kind for kind, *_ in stamped], exc) from None
        self._deliver(events)
        return events

    def _stamp(self, items: tuple[tuple[str, Any, int | None], ...]) -> list[tuple[Any, ...]]:
        stamped = []
        for i, (kind, payload, caused_by) in enumerate(items):
            kind = str(kind)  # a RunEventType member: published as plain text
            ts = self.stamp(self.emitted + i, kind) if self.stamp else utc_now()
            if kind.startswith(RUN_NAMESPACE):
                payload = {**payload, "ts": ts}
            stamped.append((kind, payload, caused_by, ts))
        return stamped

    def _publish(self, stamped: list[tuple[Any, ...]]) -> list[Any]:
        from loopbus.bus import Event, NewEvent

        agent, run_id = self.settings.agent, self.run_id
        if len(stamped) == 1:
            kind, payload, caused_by, _ = stamped[0]
            ids = [self.bus.publish(kind, payload, agent=agent, run_id=run_id, caused_by=caused_by)]
        elif stamped:  # one transaction: recorded together or not at all
            ids = self.bus.publish_many(
                [
                    NewEvent(event_type=k, payload=p, agent=agent, run_id=run_id, caused_by=c)
                    for k, p, c, _ in stamped
                ]
            )
        else:
            return []
        return [
            Event(
                id=i,
                agent=agent,
                event_type=k,
                payload=p,
                run_id=run_id,
                caused_by=c,
                created_at=ts,
            )
            for i, (k, p, c, ts) in zip(ids, stamped, strict=True)
        ]

    def _deliver(self, events: list[Any]) -> None:
        for event in events:
            if event.event_type == RunEventType.TASK and self.task_event_id is None:
                self.task_event_id = event.id
            self.observe(event)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except BaseException as exc:
                    self.interrupted = exc  # not a tool failure, even inside a tool's publish
                    raise

    def _unrecordable(self, kinds: list[str], exc: Exception) -> RunUnrecordable:
        """End the run failed because the bus refused ``kinds`` (one commit: a stand-in
        ``run.task`` if the task was among them, then the outcome); the error to raise."""
        reason = clip(f"could not record {', '.join(kinds)} on the bus: {exc}")
        items: list[tuple[str, Any, int | None]] = []
        if RunEventType.TASK in kinds:  # a run always starts with its task: resume reads it first
            stand_in = f"[a task of {len(self.task)} characters that could not be recorded]"
            task = {"task": stand_in, "settings": self.settings.model_dump(mode="json")}
            items.append((RunEventType.TASK, {**task, "unrecorded": True}, self.trigger))
        payload = {"kind": "failed", "summary": None, "reason": reason, "turns": self.turn}
        items.append((RunEventType.OUTCOME, {**payload, "unrecorded": kinds}, self.origin))
        events = self._publish(self._stamp(tuple(items)))
        self.outcome = Outcome(kind="failed", run_id=self.run_id, reason=reason)
        error = RunUnrecordable(reason)
        self.interrupted = (
            error  # raised again after a tool that caught it (see loopbus.agents.run.turn)
        )
        self._deliver(events)
        return error

    def observe(self, event: Any, *, pinned: bool = False) -> None:
        """Add a bus event of this run to the context (if it belongs there)."""
        self.emitted += 1
        self.facts.observe(event.event_type, event.payload, event.id, event.caused_by)
        view = context_view(event.event_type, event.payload)
        if view is not None:
            ts = event.payload.get("ts") or event.created_at
            pinned = pinned or event.event_type == RunEventType.TASK
            self.log.append(LogEvent(event.event_type, ts, view), pinned=pinned)

    def workspace_path(self) -> Path | None:
        return Path(self.settings.workspace) if self.settings.workspace else None
