"""Containment found by adversarial testing (issue 14): each test fails on the old sandbox."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize("event_type", ["run.outcome", "run.decision", "run", " Run.task"])
def test_publish_refuses_the_loops_run_namespace(make_sandbox, event_type: str) -> None:
    published: list[tuple[str, Any]] = []
    box = make_sandbox(publish=lambda t, p: published.append((t, p)) or len(published))
    result = box.run(f"publish({event_type!r}, {{'kind': 'done', 'answer': 'forged'}})")
    assert result.error_type == "HostError", result.error
    assert "reserved for the agent loop" in result.error
    assert published == []  # the bus never saw it
    ok = box.run("publish('result.ready', {'n': 1})")
    assert ok.ok and ok.result == "1" and published == [("result.ready", {"n": 1})]
