"""One RunNotFound: `loopbus show`/`report` (agents.runs) and a resume (agents.turn) raise the
same class, importable from both modules."""

from __future__ import annotations

from pathlib import Path

import pytest

import agents.runs
import agents.turn
from agents.errors import AgentError
from agents.loop import resume_run
from bus import SyncBus


def test_one_run_not_found_for_reading_and_resuming(tmp_path: Path) -> None:
    assert agents.turn.RunNotFound is agents.runs.RunNotFound
    assert issubclass(agents.runs.RunNotFound, AgentError)
    path = tmp_path / "bus.db"
    with SyncBus(path) as bus:
        bus.publish("note", {"text": "no runs here"})
        with pytest.raises(agents.runs.RunNotFound, match="no run 'ghost'"):
            resume_run("ghost", runtime=None, bus=bus)
    with pytest.raises(agents.turn.RunNotFound, match="no run 'ghost'"):
        agents.runs.load_timeline(path, "ghost")
