"""Event models at the Python boundary of the bus, and the rules every event obeys.

Rules (enforced before anything is written, with typed errors from :mod:`loopbus.bus.errors`):

* ``event_type``: lowercase dot-separated segments matching :data:`EVENT_TYPE_PATTERN`, at
  most :data:`MAX_EVENT_TYPE_LEN` characters, e.g. ``file.found``, ``finding``,
  ``run.decision`` -> :class:`~loopbus.bus.errors.InvalidEventType`.
* ``payload``: any JSON value (normally an object), stored as compact UTF-8 JSON text (never
  pickle); NaN/Infinity, lone surrogates and non-JSON objects ->
  :class:`~loopbus.bus.errors.InvalidPayload`; larger than ``max_payload_bytes`` (default 1 MiB)
  encoded -> :class:`~loopbus.bus.errors.PayloadTooLarge`.
* ``agent``: a non-empty string of at most 128 characters; ``run_id``: ``None`` or a
  non-empty string of at most 128 characters; ``caused_by``: ``None`` or a positive event id
  -> :class:`~loopbus.bus.errors.InvalidEvent`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from loopbus.bus.errors import (
    BusError,
    InvalidEvent,
    InvalidEventType,
    InvalidPayload,
    PayloadTooLarge,
)

EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$"
MAX_EVENT_TYPE_LEN = 128
MAX_NAME_LEN = 128
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
EVENT_TYPE_RULE = (
    "lowercase dot-separated segments: a letter first, then letters, digits, '_' or '-' "
    f"(e.g. 'file.found', 'run.decision'), at most {MAX_EVENT_TYPE_LEN} characters"
)

_EVENT_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)
# Event types already found valid (the hot path of publish skips the regex for them); an
# application uses a handful of types, the bound only guards against unbounded growth.
_KNOWN_TYPES: set[str] = set()
_KNOWN_TYPES_MAX = 4096
# Compact, UTF-8 (not \\u-escaped) and strict: SQLite's json_valid() rejects NaN/Infinity.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def validate_event_type(event_type: object) -> str:
    """Return ``event_type`` if it follows :data:`EVENT_TYPE_RULE`, else raise InvalidEventType."""
    if type(event_type) is str and event_type in _KNOWN_TYPES:
        return event_type
    if (
        not isinstance(event_type, str)
        or len(event_type) > MAX_EVENT_TYPE_LEN
        or _EVENT_TYPE_RE.match(event_type) is None
        or event_type.endswith("\n")  # `$` matches before a trailing newline
    ):
        raise InvalidEventType(f"invalid event type {event_type!r}: use {EVENT_TYPE_RULE}")
    if type(event_type) is str:
        if len(_KNOWN_TYPES) >= _KNOWN_TYPES_MAX:
            _KNOWN_TYPES.clear()
        _KNOWN_TYPES.add(event_type)
    return event_type


def encode_payload(payload: Any, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """Encode ``payload`` as compact JSON text, enforcing JSON-ness and the size limit."""
    try:
        text = _ENCODER.encode(payload)
        # ASCII text (the common case) is its own UTF-8 encoding: no need to encode it to
        # measure it; anything else is encoded, which also rejects lone surrogates.
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:
        # UnicodeEncodeError (lone surrogates) is a ValueError too.
        raise InvalidPayload(
            f"payload is not JSON-serializable ({exc}); use dicts, lists, strings, finite "
            "numbers, booleans and null"
        ) from None
    if size > max_payload_bytes:
        raise PayloadTooLarge(
            f"payload is {size} bytes as JSON, above the bus limit of {max_payload_bytes} "
            "bytes; store large data in a file and publish its path, or open the bus with a "
            "larger max_payload_bytes"
        )
    return text


def _check_name(what: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LEN:
        raise InvalidEvent(
            f"invalid {what} {value!r}: expected a non-empty string of at most "
            f"{MAX_NAME_LEN} characters"
        )


def check_event_fields(agent: object, run_id: object, caused_by: object) -> None:
    """Validate the envelope fields of a new event (raises InvalidEvent)."""
    _check_name("agent", agent, optional=False)
    _check_name("run_id", run_id, optional=True)
    if caused_by is not None and (
        not isinstance(caused_by, int)
        or isinstance(caused_by, bool)
        or not 1 <= caused_by < 1 << 63
    ):
        raise InvalidEvent(f"invalid caused_by {caused_by!r}: expected None or an event id >= 1")


def prepare_row(
    event_type: object,
    payload: Any,
    agent: object,
    run_id: object,
    caused_by: object,
    max_payload_bytes: int,
) -> tuple[str, str, str, str | None, int | None]:
    """Validate one event and return its ``(agent, event_type, payload_json, run_id,
    caused_by)`` row for the outbox. This is the fast path used by ``Bus.publish``."""
    validate_event_type(event_type)
    if not (
        type(agent) is str
        and 0 < len(agent) <= MAX_NAME_LEN
        and run_id is None
        and caused_by is None
    ):
        check_event_fields(agent, run_id, caused_by)  # the full checks (typed errors)
    text = encode_payload(payload, max_payload_bytes)
    return (agent, event_type, text, run_id, caused_by)  # type: ignore[return-value]


def check_name(what: str, value: object) -> str:
    """Validate a consumer (or similar) name: non-empty, at most MAX_NAME_LEN characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LEN:
        raise BusError(
            f"invalid {what} {value!r}: expected a non-empty string of at most "
            f"{MAX_NAME_LEN} characters"
        )
    return value


def check_id(what: str, value: object) -> int:
    """Validate an event id argument (an int >= 0)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise BusError(f"invalid {what} {value!r}: expected an event id (an integer >= 0)")
    return value


class NewEvent(BaseModel):
    """An event to publish (``Bus.publish_many``). Validates the type and the payload.

    The size limit checked here is ``max_payload_bytes`` from the validation context, else the
    default 1 MiB; the bus re-checks against its own limit when publishing.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: str
    payload: Any
    agent: str = "cli"
    run_id: str | None = None
    caused_by: int | None = None

    _payload_json: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _valid_envelope(cls, data: Any) -> Any:
        # Before pydantic's type checks, so a bad field raises our typed error.
        if isinstance(data, dict):
            validate_event_type(data.get("event_type"))
            check_event_fields(data.get("agent", "cli"), data.get("run_id"), data.get("caused_by"))
        return data

    @model_validator(mode="after")
    def _valid_payload(self, info: ValidationInfo) -> NewEvent:
        limit = DEFAULT_MAX_PAYLOAD_BYTES
        if isinstance(info.context, dict):
            limit = int(info.context.get("max_payload_bytes", limit))
        self._payload_json = encode_payload(self.payload, limit)
        return self

    @property
    def payload_json(self) -> str:
        """The payload as the compact JSON text that will be stored."""
        return self._payload_json


class Event(BaseModel):
    """An event read from the bus. ``created_at`` is ISO-8601 UTC with milliseconds
    (``2026-01-31T12:00:00.123Z``); ``payload`` is the decoded JSON value."""

    model_config = ConfigDict(frozen=True)

    id: int
    agent: str
    event_type: str
    payload: Any
    run_id: str | None = None
    caused_by: int | None = None
    created_at: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Event:
        """Build an event from an outbox row ``(id, agent, event_type, payload, run_id,
        caused_by, created_at)`` without re-validating (the database enforced it)."""
        return events_from_rows((row,), cls)[0]

    def to_json(self) -> str:
        """Serialize to a JSON object (what ``Event.from_json`` reads back)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """Parse an event serialized with :meth:`to_json`."""
        return cls.model_validate_json(text)


_EVENT_FIELDS = frozenset(Event.model_fields)
_new = object.__new__
_set = object.__setattr__
_loads = json.loads
# BaseModel's slots, set through their descriptors (what object.__setattr__ ends up calling).
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def events_from_rows(rows: Iterable[tuple[Any, ...]], cls: type[Event] = Event) -> list[Event]:
    """Events from outbox rows ``(id, agent, event_type, payload, run_id, caused_by,
    created_at)``, without re-validating them.

    The rows come from our own ``outbox`` table, whose every row was validated on the way in
    (NewEvent rules, ``json_valid`` CHECK, NOT NULL columns), so this does what
    ``Event.model_construct`` does minus its generic overhead (several times faster per event
    on the consume path): the events compare, print and serialize like validated ones.
    """
    out: list[Event] = []
    append = out.append
    for row in rows:
        try:
            payload = _loads(row[3])
        except RecursionError:
            # Only a file written by other means can hold one (publish refuses such payloads).
            raise BusError(
                f"event {row[0]} on the bus has a payload nested too deeply to decode; "
                "inspect it with `loopbus sql`"
            ) from None
        event = _new(cls)
        _set(
            event,
            "__dict__",
            {
                "id": row[0],
                "agent": row[1],
                "event_type": row[2],
                "payload": payload,
                "run_id": row[4],
                "caused_by": row[5],
                "created_at": row[6],
            },
        )
        _set_fields_set(event, set(_EVENT_FIELDS))
        _set_extra(event, None)
        _set_private(event, None)
        append(event)
    return out


@dataclass(frozen=True)
class CursorInfo:
    """One registered consumer: its committed cursor and how many stored events follow it.

    ``lag`` counts every stored event after the cursor, whatever its type. A consumer that
    subscribes to some types only still reaches 0 when caught up: its subscription commits
    the cursor past the events it skips while it waits idle (see :mod:`loopbus.bus.sqlite.subscription`).
    A consumer that is not running keeps the lag it had when it stopped.
    """

    consumer: str
    last_seen_id: int
    lag: int
    updated_at: str


@dataclass(frozen=True)
class PruneReport:
    """What ``Bus.prune`` deleted (or would delete, with ``dry_run``).

    ``up_to_id``: every event with ``id <= up_to_id`` is gone (0 = nothing deleted).
    ``overtaken``: consumers whose cursor is below ``up_to_id`` (only possible with
    ``max_age_s``): they will never see the deleted events; ``warnings`` says so in words.
    """

    deleted: int
    up_to_id: int
    slowest_consumer: str | None
    slowest_cursor: int | None
    dry_run: bool
    overtaken: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "EVENT_TYPE_PATTERN",
    "EVENT_TYPE_RULE",
    "MAX_EVENT_TYPE_LEN",
    "CursorInfo",
    "Event",
    "NewEvent",
    "PruneReport",
    "encode_payload",
    "events_from_rows",
    "prepare_row",
    "validate_event_type",
]
