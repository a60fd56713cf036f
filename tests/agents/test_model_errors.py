"""A model that fails: the run ends ``failed`` with the reason, and its recording replays."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from agents.loop import run_agent
from agents.replay import Recording, export_run, replay
from agents.testing import assert_replays


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture
def unreachable() -> Any:
    """A real ``openai:`` runtime whose server is not there (connection refused)."""
    from models import load_runtime

    return load_runtime(f"openai:http://127.0.0.1:{_closed_port()}/v1#x")


def _failed_run(runtime: Any, bus: Any) -> Any:
    outcome = run_agent("answer", "What is 2 + 2?", runtime=runtime, bus=bus, max_turns=3)
    assert outcome.kind == "failed", outcome
    return outcome


def test_unreachable_model_ends_the_run_failed(unreachable: Any, bus: Any) -> None:
    outcome = _failed_run(unreachable, bus)
    assert outcome.reason.startswith("model error: Cannot reach the model server at http://")
    assert outcome.summary is None
    events = bus.events(run_id=outcome.run_id)
    assert [e.event_type for e in events] == ["run.task", "run.outcome"]
    recorded = events[-1].payload
    assert recorded["kind"] == "failed" and recorded["reason"] == outcome.reason
    assert recorded["turns"] == 0 and recorded["model_error"]["type"] == "BackendUnreachable"
    assert recorded["model_error"]["prompt_sha256"] in recorded["counts"]
    assert len(bus.events(types="run.outcome")) == 1


def test_failed_run_exports_and_replays(unreachable: Any, bus: Any, tmp_path: Path) -> None:
    outcome = _failed_run(unreachable, bus)
    path = tmp_path / "failed.xml"
    path.write_text(export_run(bus, outcome.run_id))
    report = assert_replays(path)
    assert report.outcome == outcome and report.turns == 0


def test_replay_of_a_failed_run_checks_the_failing_prompt(unreachable: Any, bus: Any) -> None:
    outcome = _failed_run(unreachable, bus)
    recording = Recording.from_xml(export_run(bus, outcome.run_id))
    failure = recording.events[-1].payload["model_error"]
    # The replay runtime raises the recorded kind of error (a models.errors class) ...
    failure["type"] = "SchemaRejected"
    seen: list[Any] = []
    report = replay(recording, on_event=seen.append)
    assert report.ok and seen[-1].payload["model_error"]["type"] == "SchemaRejected"
    # ... else a plain ModelError, which differs from the recording (a readable diff).
    failure["type"] = "NotAModelError"
    report = replay(recording)
    assert not report.ok and report.diff.startswith("replay diverged at event 2 of 2")
    assert '-      "type": "NotAModelError"' in report.diff
    assert '+      "type": "ModelError"' in report.diff
    # A different prompt at the failing call is a divergence, not the recorded error.
    failure["type"], failure["prompt_sha256"] = "BackendUnreachable", "0" * 64
    report = replay(recording)
    assert not report.ok and "the one that failed with BackendUnreachable" in report.diff
    # Without the recorded error, the replay asks the model once more than recorded.
    del recording.events[-1].payload["model_error"]
    report = replay(recording)
    assert not report.ok and "recording has only 0 model calls" in report.diff
