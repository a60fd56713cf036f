"""`loopbus replay`'s modules: the recording format lives in loopbus.agents.run.recording (re-exported by
loopbus.agents.run.replay, so existing imports keep working) and neither module is over the house limit."""

from __future__ import annotations

from pathlib import Path

from loopbus.agents.run import recording, replay

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 600  # the developers' guide: no module over ~600 lines


def test_recording_names_are_the_same_objects_from_both_modules() -> None:
    for name in recording.__all__:
        assert getattr(replay, name) is getattr(recording, name), name
        assert name in replay.__all__, name


def test_replay_and_recording_stay_under_the_module_size_limit() -> None:
    for module in ("agents/run/replay.py", "agents/run/recording.py"):
        lines = (ROOT / module).read_text(encoding="utf-8").count("\n")
        assert lines <= MAX_LINES, f"{module} has {lines} lines"
