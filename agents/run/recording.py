"""What a recording is: a run's events as an XML file, read back and checked as input.

:class:`Recording` holds a run's events (from the bus, or an exported file; the format is in
:mod:`loopbus.agents.run.replay`'s docstring) and what replaying them needs; :meth:`Recording.checked`
and :func:`check_function` refuse a malformed or forged one with an
:class:`~loopbus.agents.errors.AgentError` (``malformed recording of run ...``) instead of a traceback
later in the replay. :mod:`loopbus.agents.run.replay` re-runs a recording; it re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from loopbus.agents.errors import AgentError
from loopbus.agents.run.context import EventLogError, LogEvent, iter_log
from loopbus.agents.run.events import (
    MalformedRunEvent,
    ModelCall,
    RunEventType,
    is_run_event,
    read_run_event,
)
from loopbus.agents.run.replay_context import context_events
from loopbus.agents.run.state import RunSettings

__all__ = [
    "FORMAT",
    "FORMAT_WITH_CONTEXT",
    "RecordedEvent",
    "Recording",
    "check_function",
    "decision_functions",
    "export_run",
    "load_recording",
]

FORMAT = "loopbus-run/1"
FORMAT_WITH_CONTEXT = "loopbus-run/2"
_HEADER = re.compile(r'<recording\s+format="([^"]*)"\s+run_id="([^"]*)"\s+agent="([^"]*)">')


class RecordedEvent(BaseModel):
    """One event of a recording (``agent`` and ``run_id`` are kept for context events only)."""

    type: str
    ts: str
    payload: Any
    id: int | None = None
    caused_by: int | None = None
    agent: str | None = None
    run_id: str | None = None

    @classmethod
    def of(cls, event: Any, *, context: bool = False) -> RecordedEvent:
        """From a bus ``Event``."""
        extra = {"agent": event.agent, "run_id": event.run_id} if context else {}
        return cls(
            type=event.event_type,
            ts=event.created_at,
            payload=event.payload,
            id=event.id,
            caused_by=event.caused_by,
            **extra,
        )


class Recording(BaseModel):
    """A run's events plus what replaying them needs (settings, task, trigger, tool reads)."""

    run_id: str
    events: list[RecordedEvent]
    context: list[RecordedEvent] = []

    @property
    def task_event(self) -> RecordedEvent:
        return self.events[0]

    @property
    def task(self) -> str:
        return self.task_event.payload["task"]

    @property
    def settings(self) -> RunSettings:
        return RunSettings.model_validate(self.task_event.payload["settings"])

    @property
    def loop_events(self) -> list[RecordedEvent]:
        """The events the loop published: up to the run's outcome (what a replay compares)."""
        for index, event in enumerate(self.events):
            if event.type == RunEventType.OUTCOME:
                return self.events[: index + 1]
        return self.events

    @classmethod
    def from_events(cls, run_id: str, events: list[Any], context: Iterable[Any] = ()) -> Recording:
        """From bus ``Event`` objects of one run (the first must be its ``run.task``) and the
        events its tools read (``context``)."""
        if not events or events[0].event_type != RunEventType.TASK:
            raise AgentError(f"no run {run_id!r} on this bus (no run.task event)")
        return cls(
            run_id=run_id,
            events=[RecordedEvent.of(e) for e in events],
            context=[RecordedEvent.of(e, context=True) for e in context],
        ).checked()

    def checked(self) -> Recording:
        """Self, after checking the run.task event replay starts from (AgentError if not)."""
        if not self.events or self.events[0].type != RunEventType.TASK:
            raise AgentError(f"malformed recording of run {self.run_id!r}: no run.task event first")
        payload = self.events[0].payload
        if not isinstance(payload, dict) or not isinstance(payload.get("task"), str):
            raise AgentError(f"malformed recording of run {self.run_id!r}: run.task has no task")
        try:
            RunSettings.model_validate(payload.get("settings"))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "settings"
            raise AgentError(
                f"malformed recording of run {self.run_id!r}: run.task settings: {where}: "
                f"{first['msg']}"
            ) from None
        for event in self.events[1:]:  # a forged or corrupt event: an error, not a traceback
            if not is_run_event(event.type):
                continue
            problem = None
            try:
                typed = read_run_event(event.type, event.payload)
            except MalformedRunEvent as exc:
                problem = exc.problem
            else:
                if isinstance(typed, ModelCall) and not isinstance(typed.raw, str):
                    problem = "it has no 'raw' text (the model's answer)"
            if problem is not None:
                raise AgentError(
                    f"malformed recording of run {self.run_id!r}: its {event.type} "
                    f"(event {event.id}) is malformed: {problem}"
                )
        return self

    @classmethod
    def from_bus(cls, bus: Any, run_id: str) -> Recording:
        events = bus.events(run_id=run_id)
        return cls.from_events(run_id, events, context_events(bus, events))

    def to_xml(self) -> str:
        """The export format (see the module docstring)."""
        lines = [
            '<?xml version="1.0" encoding="utf-8"?>',
            f'<recording format="{FORMAT_WITH_CONTEXT if self.context else FORMAT}" '
            f'run_id="{_attr(self.run_id)}" agent="{_attr(self.settings.agent)}">',
        ]
        for e in self.context:
            attrs = [("id", str(e.id)), ("agent", e.agent or "")]
            if e.run_id is not None:
                attrs.append(("run_id", e.run_id))
            if e.caused_by is not None:
                attrs.append(("caused_by", str(e.caused_by)))
            attrs.append(("context", "1"))
            lines.append(LogEvent(e.type, e.ts, e.payload, tuple(attrs)).render())
        for e in self.events:
            attrs = [("id", str(e.id))] if e.id is not None else []
            if e.caused_by is not None:
                attrs.append(("caused_by", str(e.caused_by)))
            lines.append(LogEvent(e.type, e.ts, e.payload, tuple(attrs)).render())
        lines.append("</recording>")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_xml(cls, text: str) -> Recording:
        """Parse an exported recording (either format)."""
        match = _HEADER.search(text)
        end = text.rfind("</recording>")
        if match is None or end < match.end():
            raise AgentError("not a loopbus recording (expected <recording format=...>)")
        if match.group(1) not in (FORMAT, FORMAT_WITH_CONTEXT):
            raise AgentError(
                f"unsupported recording format {match.group(1)!r}; want {FORMAT} or "
                f"{FORMAT_WITH_CONTEXT}"
            )
        events, context = [], []
        try:
            for item in iter_log(text[match.end() : end]):
                if not isinstance(item, LogEvent):
                    raise AgentError("a recording cannot contain elision markers")
                attrs = dict(item.attrs)
                event = RecordedEvent(
                    type=item.type,
                    ts=item.ts,
                    payload=item.data,
                    id=int(attrs["id"]) if "id" in attrs else None,
                    caused_by=int(attrs["caused_by"]) if "caused_by" in attrs else None,
                    agent=attrs.get("agent"),
                    run_id=attrs.get("run_id"),
                )
                (context if attrs.get("context") == "1" else events).append(event)
        except (EventLogError, ValueError) as exc:
            raise AgentError(f"malformed recording: {exc}") from None
        return cls(run_id=_unattr(match.group(2)), events=events, context=context).checked()


def _attr(value: str) -> str:
    return LogEvent("x", value, None).render().split('ts="', 1)[1].split('"', 1)[0]


def _unattr(value: str) -> str:
    return (
        value.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )


def export_run(bus: Any, run_id: str) -> str:
    """The XML recording of ``run_id`` on ``bus``."""
    return Recording.from_bus(bus, run_id).to_xml()


def load_recording(source: str | Path, *, bus_path: str | Path | None = None) -> Recording:
    """A recording from an exported file, else from the run id ``source`` on the bus."""
    path = Path(source)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise AgentError(f"{path} is not a loopbus recording (not UTF-8 text)") from None
        return Recording.from_xml(text)
    if path.exists():  # a FIFO would block the read forever, a device never ends
        raise AgentError(f"{path} is not a regular file; pass an exported recording or a run id")
    from loopbus.bus import SyncBus

    with SyncBus(bus_path, create=False) as bus:
        return Recording.from_bus(bus, str(source))


def decision_functions() -> list[str]:
    """The BAML decision functions of ``baml_client``: the functions a recording may name."""
    from loopbus.baml_client.sync_client import BamlSyncClient

    return sorted(name for name in dir(BamlSyncClient) if _is_decision_function(name))


def _is_decision_function(name: str) -> bool:
    # A recording is input: only a public client method that is also in b.request / b.parse
    # and returns BAML classes (not `__init__`, `with_options` or the `parse` property).
    import typing

    from loopbus.baml_client import b
    from loopbus.baml_client.sync_client import BamlSyncClient

    if not name.isidentifier() or name.startswith("_"):
        return False
    method = BamlSyncClient.__dict__.get(name)
    if not callable(method) or not hasattr(b.request, name) or not hasattr(b.parse, name):
        return False
    try:
        returned = typing.get_type_hints(method).get("return")
    except Exception:  # an unresolvable annotation: not one of the generated functions
        return False
    members = typing.get_args(returned) or (returned,)
    return all(isinstance(m, type) and issubclass(m, BaseModel) for m in members)


def check_function(recording: Recording) -> None:
    """AgentError unless the recording's BAML function is a decision function of baml_client."""
    name = recording.settings.function
    if (
        ":" in name
    ):  # a user's client (loopbus.agents.agent): only the recorded agent's own function
        from loopbus.agents.builtin import get_agent

        spec = get_agent(recording.settings.agent_ref or recording.settings.agent)
        if name != spec.function and name not in dict(spec.variants):
            raise AgentError(
                f"malformed recording of run {recording.run_id!r}: {name!r} is not a function "
                f"of agent {recording.settings.agent!r} ({spec.function})"
            )
        return
    if not _is_decision_function(name):
        known = ", ".join(decision_functions())
        raise AgentError(
            f"malformed recording of run {recording.run_id!r}: {name!r} is not a BAML decision "
            f"function (baml_client has: {known})"
        )
