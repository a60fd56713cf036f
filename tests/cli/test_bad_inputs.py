"""Bad input found by review: each ends in `Error: ...` and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loopbus.bus import SyncBus

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests" / "runs" / "smollm2_todo.xml"


def loopbus(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopbus.agents.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.startswith("Error: "), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_recordings(tmp_path: Path) -> None:
    text = RECORDING.read_text(encoding="utf-8")
    cases = {
        "no-task.xml": (text.replace('{"task":"Which', '{"tas":"Which'), "run.task has no task"),
        "bad-settings.xml": (text.replace('"budget":0.4', '"budget":"x"'), "settings: budget"),
        "empty.xml": (
            '<recording format="loopbus-run/1" run_id="x" agent="assistant"></recording>',
            "no run.task event first",
        ),
    }
    for name, (content, message) in cases.items():
        assert content != text or name == "empty.xml"
        (tmp_path / name).write_text(content, encoding="utf-8")
        assert_clean_error(loopbus("replay", name, cwd=tmp_path), message)


def test_files_that_are_not_utf8(tmp_path: Path) -> None:
    for name in ("chain.toml", "snippet.py", "run.xml"):
        (tmp_path / name).write_bytes(b"\xff\xfe\x00bad")
    assert_clean_error(loopbus("up", "chain.toml", cwd=tmp_path), "is not UTF-8 text")
    assert_clean_error(loopbus("sandbox", "snippet.py", cwd=tmp_path), "is not UTF-8 text")
    assert_clean_error(loopbus("replay", "run.xml", cwd=tmp_path), "not UTF-8 text")


def test_deeply_nested_payload(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    result = loopbus("--bus", "b.db", "publish", "a.b", "-", cwd=tmp_path, stdin=deep)
    assert_clean_error(result, "payload is not valid JSON")
    assert not (tmp_path / "b.db").exists()


def test_up_refuses_a_missing_workspace(tmp_path: Path) -> None:
    (tmp_path / "chain.toml").write_text(
        '[chain]\nname = "x"\nworkspace = "/nonexistent-loopbus"\n'
        '[agents.scanner]\nsubscribe = ["scan.request"]\ntask = "Start."\n',
        encoding="utf-8",
    )
    result = loopbus("--bus", "b.db", "up", "chain.toml", cwd=tmp_path)
    assert_clean_error(result, "is not a directory")
    assert "restarting" not in result.stdout + result.stderr


def test_export_to_an_unwritable_path(tmp_path: Path) -> None:
    from loopbus.agents.run.replay import load_recording

    recording = load_recording(RECORDING)
    with SyncBus(tmp_path / "b.db") as bus:
        for event in recording.events:
            bus.publish(event.type, event.payload, agent="assistant", run_id=recording.run_id)
    ok = loopbus("--bus", "b.db", "export", recording.run_id, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("<?xml"), ok.stderr
    result = loopbus(
        "--bus", "b.db", "export", recording.run_id, "-o", "/nonexistent/x.xml", cwd=tmp_path
    )
    assert_clean_error(result, "cannot write /nonexistent/x.xml")


def test_syncbus_publishes_to_the_file_it_opened_after_chdir(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    here = os.getcwd()
    try:
        os.chdir(tmp_path / "a")
        with SyncBus("rel.db") as bus:
            os.chdir(tmp_path / "b")
            event_id = bus.publish("x.y", {"n": 1})
            assert [e.id for e in bus.events()] == [event_id]
    finally:
        os.chdir(here)
    assert not (tmp_path / "b" / "rel.db").exists()
