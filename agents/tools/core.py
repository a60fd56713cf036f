"""Tools: a BAML-generated decision class plus a Python handler, bound to an agent.

A tool belongs to an :class:`loopbus.agents.agent.Agent` (``@agent.tool``); the built-in agents
bind the built-in handlers below the same way (:mod:`loopbus.agents.builtin`). There is no
process-wide registry: a run finds the tool of a decision through its own agent
(:meth:`ToolContext.tool_for`, :meth:`loopbus.agents.agent.AgentSpec.tool_for`)::

    @counter.tool
    def count_lines(call: types.CountLines, ctx: ToolContext) -> str:
        return str(len(ctx.read_text(call.path).splitlines()))

The tool's name is the class's literal ``action`` field (``"count_lines"``), which is also how
the model picks it. Handlers return a string or any JSON value; exceptions they raise become
error events the model sees (they never crash the loop), and long results are truncated with a
marker so one result cannot blow the context budget. ``idempotent`` tells durable resume
whether a call left without a recorded result may simply be executed again.

Handlers that read the bus use ``ctx.bus`` (read-only), ``ctx.trigger()`` (the event that
started the run) and publish through ``ctx.publish`` / ``ctx.publish_many`` (so the events are
part of the run's recording); both refuse the loop's ``run`` / ``run.*`` types with a ToolError,
so no tool (nor guest code in the sandbox) can forge a run event. ``reads`` declares the event
types (globs) a handler reads beyond its trigger and its own run's events: ``loopbus export``
puts those events in the recording so that ``loopbus replay`` can serve the same reads without
the original bus.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from loopbus.agents.errors import AgentError
from loopbus.agents.tools import workspace as ws

if TYPE_CHECKING:
    from loopbus.agents.agent import AgentSpec
    from loopbus.agents.sandbox.types import SandboxLimits

#: Default cap on one tool result, in characters (tokenizer-independent, so replay is exact).
MAX_RESULT_CHARS = 4000
#: Largest file ReadFile reads before truncating.
MAX_READ_BYTES = 256 * 1024

Handler = Callable[[Any, "ToolContext"], Any]


class ToolError(AgentError):
    """A tool was used wrongly (the model sees the message as an error event)."""


class UnknownTool(AgentError):
    """The agent has no tool of this name or class."""


@dataclass(frozen=True)
class Tool:
    """A tool of a resolved agent (:class:`loopbus.agents.agent.AgentSpec`). ``handler`` is None
    only for ``Done``, which the loop handles itself."""

    name: str
    cls: type[BaseModel]
    handler: Handler | None
    idempotent: bool
    description: str = ""
    reads: tuple[str, ...] = ()  # event types (globs) the handler reads from ctx.bus


class BusReader(Protocol):
    """Read access to the bus, as :class:`bus.SyncBus` has it (``ToolContext.bus``)."""

    def events(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        """Stored events with ``id > since_id`` in id order (``bus.Event`` objects)."""
        ...

    def get(self, event_id: int) -> Any | None:
        """The event with this id, or None."""
        ...


class BusReads:
    """The read half of a :class:`bus.SyncBus`: what a live run's tools get as ``ctx.bus``."""

    def __init__(self, bus: Any) -> None:
        self._bus = bus

    def events(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[Any]:
        """Stored events with ``id > since_id`` in id order (see ``SyncBus.events``)."""
        return self._bus.events(since_id=since_id, types=types, run_id=run_id, limit=limit)

    def get(self, event_id: int) -> Any | None:
        """The event with this id, or None."""
        return self._bus.get(event_id)


@dataclass
class ToolContext:
    """What a handler may use: the run's identity, its read-only workspace, bus reads, a way to
    publish and an output folder.

    The loop provides ``publish`` (one event) and ``publish_many`` (several, one transaction):
    they emit events attributed to the agent, with the run's ``run_id`` and ``caused_by`` = the
    event that triggered the run (``caused_by`` here; :meth:`trigger` reads it), and the run's
    recording includes them. ``bus`` reads the bus (a replay serves it from the recording).
    ``output`` is the folder writing tools write to (a chain's ``output``; a scratch folder in a
    replay). ``llm(prompt)`` asks the run's model (recorded as ``run.llm_call``, so a replay
    answers from the recording). ``resources`` holds per-run objects (e.g. the sandbox
    session), closed by :meth:`close` when the run ends. ``agent`` is the run's recorded agent
    name and ``agent_ref`` the reference its agent resolves from when that differs (a chain
    agent configured under another name): :attr:`spec` is that agent, whose tools the run uses.
    ``sandbox`` is the run's own RunPython sandbox limits (its settings), None: the agent's default.
    """

    run_id: str
    agent: str
    workspace: Path | None = None
    publish: Callable[[str, Any], int] | None = None
    runtime: Any = None
    resources: dict[str, Any] = field(default_factory=dict)
    bus: BusReader | None = None
    caused_by: int | None = None
    output: Path | None = None
    publish_many: Callable[[list[tuple[str, Any]]], list[int]] | None = None
    llm: Callable[[str], str] | None = None
    agent_ref: str | None = None
    sandbox: SandboxLimits | None = None

    def __post_init__(self) -> None:
        # Every tool publishes through these two (Publish, chain tools, the sandbox's
        # publish()): a run.* event from a tool would be read back as the loop's own.
        if self.publish is not None:
            self.publish = _guarded_publish(self.publish)
        if self.publish_many is not None:
            self.publish_many = _guarded_publish_many(self.publish_many)

    def trigger(self) -> Any:
        """The bus event that started this run; ToolError when there is none."""
        if self.caused_by is None:
            raise ToolError("this run has no triggering event; it must be started by a chain")
        if self.bus is None:
            raise ToolError("this run has no bus to read")
        event = self.bus.get(self.caused_by)
        if event is None:
            raise ToolError(f"the triggering event {self.caused_by} is no longer on the bus")
        return event

    @functools.cached_property
    def spec(self) -> AgentSpec:
        """The run's agent (resolved once per run from ``agent_ref`` or ``agent``)."""
        from loopbus.agents.builtin import get_agent

        return get_agent(self.agent_ref or self.agent)

    def tool_for(self, decision: BaseModel | type) -> Tool:
        """The tool of a decision (object or class) among the run's agent's tools."""
        return self.spec.tool_for(decision)

    @functools.cached_property
    def real_workspace(self) -> Path | None:
        """The workspace root with symlinks resolved (once per run)."""
        return self.workspace.resolve() if self.workspace is not None else None

    def path(self, relative: str) -> Path:
        """Resolve ``relative`` inside the workspace (refusing escapes)."""
        return ws.resolve(self.workspace, relative, real_root=self.real_workspace)

    def read_text(self, relative: str, limit: int = MAX_READ_BYTES) -> str:
        """Read a workspace file as text (invalid UTF-8 replaced), at most ``limit`` bytes."""
        target = self.path(relative)
        if not target.is_file():
            raise ToolError(f"{relative!r} is not a file; use list_dir to see what exists")
        with target.open("rb") as fh:
            data = fh.read(limit + 1)
        text = data[:limit].decode("utf-8", errors="replace")
        if len(data) > limit:
            text += f"\n...[file longer than {limit} bytes; rest not read]"
        return text

    def close(self) -> None:
        """Close per-run resources (those with a ``close()`` method)."""
        for resource in self.resources.values():
            closer = getattr(resource, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        self.resources.clear()


def check_tool_event_type(event_type: Any) -> str:
    """``event_type`` if a tool may publish it; ToolError for the loop's ``run`` namespace."""
    if not isinstance(event_type, str):
        raise ToolError(f"an event type must be a string, not {type(event_type).__name__}")
    if event_type.strip().lower().split(".", 1)[0] == "run":
        raise ToolError(
            f"cannot publish {event_type[:80]!r}: event types in the 'run.' namespace are "
            "reserved for the loop"
        )
    return event_type


def _guarded_publish(publish: Callable[[str, Any], int]) -> Callable[[str, Any], int]:
    if getattr(publish, "_guarded", False):
        return publish

    def guarded(event_type: str, payload: Any) -> int:
        return publish(check_tool_event_type(event_type), payload)

    guarded._guarded = True  # type: ignore[attr-defined]
    return guarded


def _guarded_publish_many(
    publish_many: Callable[[list[tuple[str, Any]]], list[int]],
) -> Callable[[list[tuple[str, Any]]], list[int]]:
    if getattr(publish_many, "_guarded", False):
        return publish_many

    def guarded(items: list[tuple[str, Any]]) -> list[int]:
        items = list(items)
        for item in items:  # all checked first: the batch is published whole or not at all
            check_tool_event_type(item[0])
        return publish_many(items)

    guarded._guarded = True  # type: ignore[attr-defined]
    return guarded


def action_name(cls: type[BaseModel]) -> str:
    """The literal value of a tool class's ``action`` field, else its snake_cased class name."""
    info = cls.model_fields.get("action")
    if info is not None:
        args = typing.get_args(info.annotation)
        if len(args) == 1 and isinstance(args[0], str):
            return args[0]
    name = cls.__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def truncate(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """``text`` cut to ``limit`` characters with a visible marker saying how much was dropped."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n...[truncated {len(text) - limit} chars]"


def shape_result(value: Any, limit: int = MAX_RESULT_CHARS) -> Any:
    """A handler's return value made JSON-safe and bounded (long values become truncated text)."""
    if value is None:
        return "ok"
    if isinstance(value, str):
        return truncate(value, limit)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return truncate(repr(value), limit)
    return value if len(text) <= limit else truncate(text, limit)


# ---------------------------------------------------------------------------------------------
# Built-in tools (bound to the built-in agents in loopbus.agents.builtin).


def list_dir(call: Any, ctx: ToolContext) -> str:
    """Names in a workspace directory, directories with a trailing ``/``, then a last line
    that counts them: ``(3 files, 1 folder)``."""
    target = ctx.path(call.path)
    if not target.is_dir():
        raise ToolError(f"{call.path!r} is not a directory; use list_dir with '.' for the root")
    lines = []
    for entry in sorted(target.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue  # hidden files are noise for small models
        lines.append(entry.name + "/" if entry.is_dir() else entry.name)
    if not lines:
        return "(empty directory)"
    # The tool counts, so the model only copies a number: a 135M model cannot count a listing.
    return "\n".join([*lines, entry_count(lines)])


def entry_count(names: list[str]) -> str:
    """The last line of a listing: ``(2 files)``, ``(1 folder)``, ``(3 files, 1 folder)``."""
    folders = sum(name.endswith("/") for name in names)
    files = len(names) - folders
    parts = [
        f"{n} {word}{'' if n == 1 else 's'}"
        for n, word in ((files, "file"), (folders, "folder"))
        if n
    ]
    return f"({', '.join(parts)})"


def read_file(call: Any, ctx: ToolContext) -> str:
    """The text of a workspace file."""
    return ctx.read_text(call.path)


def publish(call: Any, ctx: ToolContext) -> str:
    """Publish a typed event on the bus for other agents."""
    if ctx.publish is None:
        raise ToolError("this run has no bus to publish on")
    ctx.publish(call.event_type, dict(call.payload))  # refuses the loop's run.* types
    return f"published {call.event_type}"
