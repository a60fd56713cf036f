"""What a replayed run's tools read: the context of a recording (see :mod:`loopbus.agents.run.replay`).

:func:`context_events` picks, at export time, the events a run's tools read besides the run's own
events: its trigger and the events of the types its tools declare in ``reads``.
:class:`RecordedReads` serves them (with the replayed run's own events) as ``ctx.bus`` in a replay.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from loopbus.agents.errors import AgentError
from loopbus.agents.run.events import RunEventType

if TYPE_CHECKING:
    from loopbus.agents.run.replay import RecordedEvent, Recording

__all__ = ["RecordedReads", "context_events"]


def context_events(bus: Any, events: list[Any]) -> list[Any]:
    """What the tools of a run read besides its own events: its trigger, and the events of
    the types its tools declare in ``reads`` committed before its last call to such a tool."""
    if not events or events[0].event_type != RunEventType.TASK:
        return []
    found: dict[int, Any] = {}
    trigger_id = events[0].caused_by
    if trigger_id is not None and (trigger := bus.get(trigger_id)) is not None:
        found[trigger.id] = trigger
    reads: set[str] = set()
    horizon = 0
    spec = _run_agent(events[0].payload)
    for event in events:
        if event.event_type == RunEventType.TOOL_CALL:
            declared = _declared_reads(spec, event.payload.get("tool"))
            if declared:
                reads.update(declared)
                horizon = event.id
    if reads:
        run_id = events[0].run_id
        for event in bus.events(types=sorted(reads)):
            if event.id >= horizon:
                break
            if event.run_id != run_id:
                found[event.id] = event
    return [found[i] for i in sorted(found)]


def _run_agent(task: Any) -> Any:
    """The run's agent (an AgentSpec) from its ``run.task`` settings (``agent_ref``, else
    ``agent``); None when no reference resolves (a malformed or foreign recording)."""
    from loopbus.agents.builtin import get_agent

    try:
        settings = task["settings"]
        return get_agent(settings.get("agent_ref") or settings["agent"])
    except (AgentError, KeyError, TypeError, AttributeError):
        return None


def _declared_reads(spec: Any, tool: Any) -> tuple[str, ...]:
    """What the agent's tool named ``tool`` declares it reads (none for an unknown tool)."""
    if spec is None:
        return ()
    try:
        return spec.tool(str(tool)).reads
    except AgentError:
        return ()


class RecordedReads:
    """``ctx.bus`` in a replay: a recording's context events and the replayed run's own events
    (under their recorded ids), as the bus looked when each tool ran (the context events
    committed before the run's latest event). Same ``events`` / ``get`` as ``SyncBus``."""

    def __init__(self, recording: Recording) -> None:
        from loopbus.bus import Event

        self._context = [
            Event(
                id=e.id,
                agent=e.agent or "cli",
                event_type=e.type,
                payload=e.payload,
                run_id=e.run_id,
                caused_by=e.caused_by,
                created_at=e.ts,
            )
            for e in sorted(recording.context, key=lambda e: e.id or 0)
            if e.id is not None
        ]
        self._added: list[tuple[Any, int | None]] = []
        self._own: list[Any] = []
        self._horizon: int | None = None

    def add(self, event: Any, recorded: RecordedEvent) -> None:
        """A replayed event of the run, matched with its recorded counterpart."""
        self._added.append((event, recorded.id))  # re-id'd when read (most runs never read)
        if recorded.id is not None:
            self._horizon = recorded.id

    def _own_events(self) -> list[Any]:
        for event, recorded_id in self._added[len(self._own) :]:
            if recorded_id is not None:
                event = event.model_copy(update={"id": recorded_id})
            self._own.append(event)
        return self._own

    def _visible(self) -> list[Any]:
        horizon = self._horizon
        context = [e for e in self._context if horizon is None or e.id < horizon]
        return sorted(context + self._own_events(), key=lambda e: e.id)

    def events(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        """The visible events with ``id > since_id`` matching ``types`` (globs) and ``run_id``."""
        patterns = None if types is None else [types] if isinstance(types, str) else list(types)
        found = []
        for event in self._visible():
            if event.id <= since_id or (run_id is not None and event.run_id != run_id):
                continue
            if patterns is not None and not any(
                fnmatch.fnmatchcase(event.event_type, p) for p in patterns
            ):
                continue
            found.append(event)
            if limit is not None and len(found) >= limit:
                break
        return found

    def get(self, event_id: int) -> Any | None:
        """The event with this id, or None."""
        return next((e for e in self._context + self._own_events() if e.id == event_id), None)
