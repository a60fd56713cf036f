"""Event naming rule, payload rules and serialization round-trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopbus.bus import Event, NewEvent, SyncBus
from loopbus.bus.errors import InvalidEvent, InvalidEventType, InvalidPayload, PayloadTooLarge
from loopbus.bus.events import encode_payload, validate_event_type


@pytest.mark.parametrize(
    "name", ["file.found", "finding", "run.decision", "a", "a-b.c_d.9", "x" * 128]
)
def test_valid_event_types(name: str) -> None:
    assert validate_event_type(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "File.found",
        "file..found",
        ".file",
        "file.",
        "9lives",
        "a b",
        "a/b",
        "a.b\n",
        "é",
        "x" * 129,
        5,
        None,
    ],
)
def test_invalid_event_types(name: object) -> None:
    with pytest.raises(InvalidEventType, match="lowercase dot-separated"):
        validate_event_type(name)
    with pytest.raises(InvalidEventType):
        NewEvent(event_type=name, payload={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload", [math.nan, math.inf, {1, 2}, b"bytes", object(), {"s": "\ud800"}]
)
def test_non_json_payloads(payload: object) -> None:
    with pytest.raises(InvalidPayload, match="not JSON-serializable"):
        encode_payload(payload)


def test_payload_size_limit() -> None:
    assert encode_payload("x" * 100, 102) == '"' + "x" * 100 + '"'
    with pytest.raises(PayloadTooLarge, match="103 bytes as JSON, above the bus limit of 102"):
        encode_payload("x" * 101, 102)
    # The limit counts UTF-8 bytes, not characters.
    with pytest.raises(PayloadTooLarge):
        encode_payload("é" * 60, 102)
    big = "x" * (1 << 20)
    with pytest.raises(PayloadTooLarge):
        NewEvent(event_type="big", payload=big)
    event = NewEvent.model_validate(
        {"event_type": "big", "payload": big}, context={"max_payload_bytes": 2 << 20}
    )
    assert len(event.payload_json) == (1 << 20) + 2


def test_payload_is_compact_utf8_json() -> None:
    event = NewEvent(event_type="a", payload={"k": [1, 2], "t": "é"})
    assert event.payload_json == '{"k":[1,2],"t":"é"}'


@pytest.mark.parametrize(
    "fields",
    [{"agent": ""}, {"agent": "x" * 129}, {"run_id": ""}, {"caused_by": 0}, {"caused_by": 1 << 63}],
)
def test_invalid_envelope_fields(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidEvent):
        NewEvent(event_type="a", payload=1, **fields)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
event_types = st.from_regex(r"\A[a-z][a-z0-9_-]{0,8}(\.[a-z0-9_-]{1,8}){0,3}\Z")
events = st.builds(
    Event,
    id=st.integers(min_value=1, max_value=(1 << 63) - 1),
    agent=st.text(min_size=1, max_size=16),
    event_type=event_types,
    payload=json_values,
    run_id=st.none() | st.text(min_size=1, max_size=16),
    caused_by=st.none() | st.integers(min_value=1, max_value=(1 << 63) - 1),
    created_at=st.just("2026-01-31T12:00:00.123Z"),
)


def _same_json(a: object, b: object) -> bool:
    # Compare as JSON text so that 1 vs 1.0 (and -0.0 vs 0.0) count as different.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@given(events)
def test_event_json_round_trip(event: Event) -> None:
    back = Event.from_json(event.to_json())
    assert back == event
    assert _same_json(back.payload, event.payload)


@pytest.fixture(scope="module")
def shared_bus(tmp_path_factory: pytest.TempPathFactory) -> SyncBus:
    path: Path = tmp_path_factory.mktemp("roundtrip") / "bus.db"
    with SyncBus(path, synchronous="NORMAL") as bus:
        yield bus


@settings(max_examples=60, deadline=None)
@given(
    event_type=event_types,
    payload=json_values,
    agent=st.text(min_size=1, max_size=16),
    run_id=st.none() | st.text(min_size=1, max_size=16),
)
def test_publish_get_round_trip(
    shared_bus: SyncBus, event_type: str, payload: object, agent: str, run_id: str | None
) -> None:
    event_id = shared_bus.publish(event_type, payload, agent=agent, run_id=run_id)
    stored = shared_bus.get(event_id)
    assert stored is not None
    assert (stored.id, stored.event_type, stored.agent, stored.run_id) == (
        event_id,
        event_type,
        agent,
        run_id,
    )
    assert _same_json(stored.payload, payload)
    assert stored.created_at.endswith("Z") and len(stored.created_at) == 24
