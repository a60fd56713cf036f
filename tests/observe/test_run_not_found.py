"""One RunNotFound: `loopbus show`/`report` (loopbus.agents.observe.runs) and a resume (loopbus.agents.run.turn) raise the
same class, importable from both modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopbus.agents.errors import AgentError
from loopbus.agents.observe import runs
from loopbus.agents.run import turn
from loopbus.agents.run.loop import resume_run
from loopbus.bus import SyncBus


def test_one_run_not_found_for_reading_and_resuming(tmp_path: Path) -> None:
    assert turn.RunNotFound is runs.RunNotFound
    assert issubclass(runs.RunNotFound, AgentError)
    path = tmp_path / "bus.db"
    with SyncBus(path) as bus:
        bus.publish("note", {"text": "no runs here"})
        with pytest.raises(runs.RunNotFound, match="no run 'ghost'"):
            resume_run("ghost", runtime=None, bus=bus)
    with pytest.raises(turn.RunNotFound, match="no run 'ghost'"):
        runs.load_timeline(path, "ghost")
