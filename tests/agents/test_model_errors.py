"""A model that fails: the run ends ``failed`` with the reason, and its recording replays."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from loopbus.agents.run.loop import run_agent
from loopbus.agents.run.replay import Recording, export_run, replay
from loopbus.agents.testing import CountingRuntime, assert_replays


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture
def unreachable() -> Any:
    """A real ``openai:`` runtime whose server is not there (connection refused)."""
    from loopbus.models import load_runtime

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
    # The replay runtime raises the recorded kind of error (a loopbus.models.errors class) ...
    failure["type"] = "SchemaRejected"
    seen: list[Any] = []
    report = replay(recording, on_event=seen.append)
    assert report.ok and seen[-1].payload["model_error"]["type"] == "SchemaRejected"
    # ... else an error of that name that is not a ModelError (a runtime bug, recorded with
    # its class name in the reason), which differs from this recording (a readable diff).
    failure["type"] = "NotAModelError"
    report = replay(recording)
    assert not report.ok and report.diff.startswith("replay diverged at event 2 of 2")
    assert '-    "reason": "model error: Cannot reach' in report.diff
    assert '+    "reason": "model error: NotAModelError: Cannot reach' in report.diff
    # A different prompt at the failing call is a divergence, not the recorded error.
    failure["type"], failure["prompt_sha256"] = "BackendUnreachable", "0" * 64
    report = replay(recording)
    assert not report.ok and "the one that failed with BackendUnreachable" in report.diff
    # Without the recorded error, the replay asks the model once more than recorded.
    del recording.events[-1].payload["model_error"]
    report = replay(recording)
    assert not report.ok and "recording has only 0 model calls" in report.diff


class _Faulty(CountingRuntime):
    """The real tiny model with one injected fault: ``count_tokens`` or the ``fail_at``-th
    ``generate`` raises an error that is not a ModelError (a tokenizer or runtime bug)."""

    def __init__(self, inner: Any, *, tokenizer: bool = False, fail_at: int = 0) -> None:
        super().__init__(inner)
        self.tokenizer, self.fail_at = tokenizer, fail_at

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        if self.tokenizer:
            raise ValueError("tokenizer exploded")
        return super().count_tokens(messages)

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        if self.calls + 1 == self.fail_at:
            self.calls += 1
            raise RuntimeError("[metal::malloc] out of memory")
        return super().generate(messages, **kwargs)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"tokenizer": True}, "model error: ValueError: tokenizer exploded"),
        ({"fail_at": 1}, "model error: RuntimeError: [metal::malloc] out of memory"),
    ],
)
def test_any_runtime_failure_ends_the_run_failed_and_replays(
    tiny_runtime: Any, bus: Any, workspace: Path, fault: dict[str, Any], reason: str
) -> None:
    """Not only ModelError: a run never stays without an outcome (a chain agent would resume it
    and fail again on every restart)."""
    runtime = _Faulty(tiny_runtime, **fault)
    outcome = run_agent(
        "assistant",
        "What is in README.md?",
        runtime=runtime,
        bus=bus,
        workspace=workspace,
        max_turns=3,
    )
    assert (outcome.kind, outcome.reason) == ("failed", reason)
    events = bus.events(run_id=outcome.run_id)
    assert events[-1].payload["model_error"]["type"] == reason.split(": ")[1]
    assert bus.unfinished_runs("assistant") == []
    report = replay(Recording.from_bus(bus, outcome.run_id), workspace=workspace)
    assert report.ok, report.diff
    assert report.outcome == outcome
