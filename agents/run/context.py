"""The event log is the context: a run's events rendered as ``<event type="..." ts="...">{json}</event>``.

Rendering is injection-safe: inside the JSON body ``<``, ``>`` and ``&`` are written as the JSON
escapes ``\\u003c``, ``\\u003e``, ``\\u0026`` (still valid JSON, decoded back by any JSON parser), so a
tool result that contains ``</event>`` or ``<event type="x">`` can neither close nor forge an event.
Attribute values are XML-escaped. :func:`parse_log` reads a rendered log back (round-trip tested
with hypothesis on hostile strings).

:class:`EventLog` is the in-memory context of one run: pinned events (the task) always stay; the
opt-in elision policy drops the oldest unpinned events and leaves ``<elided count="N"/>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from loopbus.agents.errors import AgentError

_BODY_ESCAPES = (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"))
_ATTR_ESCAPES = (("&", "&amp;"), ('"', "&quot;"), ("<", "&lt;"), (">", "&gt;"))
_ATTR_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# One event or one elision marker; bodies never contain "<" once escaped.
_ITEM = re.compile(
    r'<event((?:\s+[a-z_][a-z0-9_]*="[^"<>]*")*)>([^<]*)</event>|<elided count="(\d+)"/>'
)
_ATTR = re.compile(r'([a-z_][a-z0-9_]*)="([^"<>]*)"')


class EventLogError(AgentError):
    """A rendered event log (or an exported recording) is malformed."""


def dump_json(value: Any) -> str:
    """Compact JSON with ``<``, ``>`` and ``&`` escaped so it is inert inside markup."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in _BODY_ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _escape_attr(value: str) -> str:
    for raw, escaped in _ATTR_ESCAPES:
        value = value.replace(raw, escaped)
    return value


def _unescape_attr(value: str) -> str:
    for raw, escaped in reversed(_ATTR_ESCAPES):
        value = value.replace(escaped, raw)
    return value


@dataclass(frozen=True)
class LogEvent:
    """One event of the log: its bus type, timestamp and JSON data (plus optional extra attributes)."""

    type: str
    ts: str
    data: Any
    attrs: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        """``<event type="..." ts="..." [extra attrs]>{json}</event>``."""
        parts = [f'type="{_escape_attr(self.type)}"', f'ts="{_escape_attr(self.ts)}"']
        for name, value in self.attrs:
            if not _ATTR_NAME.match(name):
                raise EventLogError(f"invalid attribute name {name!r}")
            parts.append(f'{name}="{_escape_attr(value)}"')
        return f"<event {' '.join(parts)}>{dump_json(self.data)}</event>"


@dataclass(frozen=True)
class Elided:
    """The marker left where the elision policy dropped ``count`` events."""

    count: int

    def render(self) -> str:
        return f'<elided count="{self.count}"/>'


def render_log(items: Iterable[LogEvent | Elided]) -> str:
    """Render events (and elision markers) one per line."""
    return "\n".join(item.render() for item in items)


def iter_log(text: str) -> Iterator[LogEvent | Elided]:
    """Parse a rendered log back into events and markers; anything else between them is an error."""
    pos = 0
    for match in _ITEM.finditer(text):
        if text[pos : match.start()].strip():
            raise EventLogError(f"unexpected text in event log at offset {pos}")
        pos = match.end()
        if match.group(3) is not None:
            yield Elided(int(match.group(3)))
            continue
        attrs = {name: _unescape_attr(value) for name, value in _ATTR.findall(match.group(1))}
        try:
            kind, ts = attrs.pop("type"), attrs.pop("ts")
        except KeyError as exc:
            raise EventLogError(f"event at offset {match.start()} lacks {exc}") from None
        try:
            data = json.loads(match.group(2))
        except json.JSONDecodeError as exc:
            raise EventLogError(
                f"event at offset {match.start()} has invalid JSON: {exc}"
            ) from None
        yield LogEvent(kind, ts, data, tuple(attrs.items()))
    if text[pos:].strip():
        raise EventLogError(f"unexpected text in event log at offset {pos}")


def parse_log(text: str) -> list[LogEvent | Elided]:
    """The list form of :func:`iter_log`."""
    return list(iter_log(text))


@dataclass
class EventLog:
    """A run's context: pinned events first, then an elision marker (if any), then the rest."""

    pinned: list[LogEvent] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)
    elided: int = 0
    _rendered: list[str] = field(default_factory=list, repr=False)

    def append(self, event: LogEvent, *, pinned: bool = False) -> None:
        """Add an event at the end (pinned events are never elided)."""
        if pinned:
            self.pinned.append(event)
        else:
            self.events.append(event)
            self._rendered.append(event.render())

    def elide_oldest(self, count: int = 1) -> bool:
        """Drop the ``count`` oldest unpinned events; False when nothing is left to drop."""
        if not self.events:
            return False
        count = min(count, len(self.events))
        del self.events[:count]
        del self._rendered[:count]
        self.elided += count
        return True

    def render(self) -> str:
        """The context text given to the model (rendered strings are cached per event)."""
        head = [event.render() for event in self.pinned]
        if self.elided:
            head.append(Elided(self.elided).render())
        return "\n".join(head + self._rendered)

    def __len__(self) -> int:
        return len(self.pinned) + len(self.events)
