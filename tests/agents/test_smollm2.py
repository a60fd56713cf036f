"""The embedded SmolLM2: committed real recordings replay (fast), and a live run (slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loopbus.agents.testing import assert_replays

RUNS = Path(__file__).resolve().parents[1] / "runs"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "workspace"


def test_smollm2_version_question_replays() -> None:
    assert_replays(RUNS / "smollm2_version.xml", workspace=FIXTURE)


def test_smollm2_todo_question_replays() -> None:
    assert_replays(RUNS / "smollm2_todo.xml", workspace=FIXTURE)


def test_smollm2_runs_with_the_decoding_policy_replay(tmp_path: Path) -> None:
    """Recorded with the assistant's policy: replay rebuilds each turn's schema from the
    workspace and checks it (and the recorded decision) against the recording."""
    import shutil

    launch = RUNS / "workspaces" / "launch"
    assert_replays(RUNS / "smollm2_launch.xml", workspace=launch)
    assert_replays(RUNS / "smollm2_todo_policy.xml", workspace=FIXTURE)
    # Another tree is another first-turn schema: the replay says so.
    changed = tmp_path / "launch"
    shutil.copytree(launch, changed)
    (changed / "extra.txt").write_text("x")
    with pytest.raises(AssertionError, match="the decoding schema changed"):
        assert_replays(RUNS / "smollm2_launch.xml", workspace=changed)


@pytest.mark.slow
def test_live_smollm2_turn_replays(smollm2_path: Path, bus: Any, tmp_path: Path) -> None:
    from loopbus.agents.run.loop import run_agent
    from loopbus.agents.run.replay import export_run
    from loopbus.models import load_runtime

    runtime = load_runtime(str(smollm2_path))
    assert runtime.supports_schema
    outcome = run_agent(
        "assistant",
        "What files are in this folder?",
        runtime=runtime,
        bus=bus,
        workspace=FIXTURE,
        max_turns=1,
    )
    assert outcome.kind in ("done", "max_turns")
    (tmp_path / "run.xml").write_text(export_run(bus, outcome.run_id))
    assert assert_replays(tmp_path / "run.xml", workspace=FIXTURE).outcome == outcome
