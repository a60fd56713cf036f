"""The pytest plugin (agents/pytest_plugin.py) in a real pytest subprocess: the `replay` fixture
passes a committed recording, fails a tampered one with the diff, and `--loopbus-rerecord`
rewrites a recording with a given model so that it replays again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDING = REPO / "tests" / "runs" / "smollm2_version.xml"
WORKSPACE = REPO / "tests" / "fixtures" / "workspace"

TEST = f"""
def test_it(replay):
    replay("run.xml", workspace={str(WORKSPACE)!r})
"""


def _plugin_args() -> list[str]:
    # An installed loopbus enables the plugin by its pytest11 entry point; a checkout needs -p.
    installed = metadata.entry_points(group="pytest11", name="loopbus")
    return [] if installed else ["-p", "loopbus.agents.pytest_plugin"]


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            *_plugin_args(),
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(folder),
            *args,
            "test_it.py",
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_replay_fixture_passes_and_fails_with_the_diff(tmp_path: Path) -> None:
    (tmp_path / "test_it.py").write_text(TEST)
    shutil.copy(RECORDING, tmp_path / "run.xml")
    ok = _pytest(tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    text = (tmp_path / "run.xml").read_text()
    (tmp_path / "run.xml").write_text(text.replace("Pebble", "Pebbel", 1))
    bad = _pytest(tmp_path)
    assert bad.returncode == 1
    assert "does not replay" in bad.stdout


def test_rerecord_rewrites_the_recording_with_the_given_model(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    (tmp_path / "test_it.py").write_text(TEST)
    shutil.copy(RECORDING, tmp_path / "run.xml")
    before = (tmp_path / "run.xml").read_text()
    again = _pytest(tmp_path, "--loopbus-rerecord", "--loopbus-model", str(tiny_model_path))
    assert again.returncode == 0, again.stdout + again.stderr
    after = (tmp_path / "run.xml").read_text()
    assert after != before and str(tiny_model_path) in after
    replayed = _pytest(tmp_path)  # the new recording replays without a model
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
