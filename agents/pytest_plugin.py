"""loopbus's pytest plugin (entry point ``pytest11``): recorded runs as one-line tests.

::

    def test_version_question(replay):
        replay("tests/runs/smollm2_version.xml", workspace="tests/fixtures/workspace")

``replay(recording, workspace=None)`` replays the exported recording (no model is loaded) and
fails with the diff of the first divergence (:func:`loopbus.agents.testing.assert_replays`).

After a deliberate change (a prompt, a tool, a policy), re-record instead of replaying:
``pytest --loopbus-rerecord [--loopbus-model SPEC]`` runs each recording's task again with a
real model (``SPEC``, default: the model the recording names, else ``default``), with its
recorded agent, settings and workspace, and rewrites the file with the new run. Re-recording
keeps the run id; the test fails if the new run cannot be exported.

Without the entry point (a source checkout), enable it with ``-p loopbus.agents.pytest_plugin``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

RERECORD = "--loopbus-rerecord"
MODEL = "--loopbus-model"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--loopbus-rerecord`` and ``--loopbus-model SPEC``."""
    group = parser.getgroup("loopbus")
    group.addoption(
        RERECORD,
        action="store_true",
        default=False,
        help="re-run every recording used by the `replay` fixture with a real model and "
        "rewrite it (instead of replaying it)",
    )
    group.addoption(
        MODEL,
        default=None,
        metavar="SPEC",
        help="model spec for --loopbus-rerecord (default: the recording's own model)",
    )


def rerecord(recording: str | Path, *, model: str | None, workspace: str | Path | None) -> Path:
    """Run ``recording``'s task again with a real model and rewrite the file with the new run."""
    from loopbus.agents.run.loop import run_agent
    from loopbus.agents.run.recording import export_run, load_recording
    from loopbus.bus import SyncBus
    from loopbus.models import load_runtime

    path = Path(recording)
    old = load_recording(path)
    settings = old.settings
    runtime = load_runtime(model or settings.model or "default")
    folder = workspace if workspace is not None else settings.workspace
    with tempfile.TemporaryDirectory() as tmp, SyncBus(Path(tmp) / "rerecord.db") as bus:
        run_agent(
            settings.agent_ref or settings.agent,
            old.task,
            runtime=runtime,
            bus=bus,
            workspace=Path(folder) if folder else None,
            max_turns=settings.max_turns,
            budget=settings.budget,
            elide=settings.elide,
            run_id=old.run_id,
            name=settings.agent,
        )
        text = export_run(bus, old.run_id)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def replay(request: pytest.FixtureRequest) -> Any:
    """``replay(recording, workspace=None)``: assert the recording replays (or re-record it
    under ``--loopbus-rerecord``); returns the ReplayReport (None when re-recorded)."""
    from loopbus.agents.testing import assert_replays

    config = request.config

    def check(recording: str | Path, *, workspace: str | Path | None = None) -> Any:
        if config.getoption(RERECORD):
            rerecord(recording, model=config.getoption(MODEL), workspace=workspace)
            return None
        return assert_replays(recording, workspace=workspace)

    return check
