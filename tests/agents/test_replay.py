"""Record and replay: exports, replay without a model, divergence diffs, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace as replace_field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from loopbus.agents import builtin
from loopbus.agents.cli import main as loopbus
from loopbus.agents.run.loop import run_agent
from loopbus.agents.run.replay import Recording, export_run, replay
from loopbus.agents.testing import assert_replays
from loopbus.agents.tools.core import list_dir

RUNS = Path(__file__).resolve().parents[1] / "runs"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "workspace"
CRAFTED = RUNS / "crafted_50_turns.xml"


def test_crafted_fifty_turn_recording_replays() -> None:
    report = assert_replays(CRAFTED, workspace=FIXTURE)
    assert report.turns == 50 and report.outcome.kind == "done"


def test_live_tiny_run_exports_and_replays(
    tiny_runtime: Any, bus: Any, workspace: Path, tmp_path: Path
) -> None:
    outcome = run_agent(
        "assistant",
        "What is in src?",
        runtime=tiny_runtime,
        bus=bus,
        workspace=workspace,
        max_turns=3,
    )
    text = export_run(bus, outcome.run_id)
    recording = Recording.from_xml(text)
    assert recording.to_xml() == text  # the export format round-trips exactly
    assert [e.type for e in recording.events] == [
        e.event_type for e in bus.events(run_id=outcome.run_id)
    ]
    (tmp_path / "run.xml").write_text(text)
    report = assert_replays(tmp_path / "run.xml", workspace=workspace)
    assert report.outcome == outcome


@pytest.fixture
def changed_list_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    def different(call: Any, ctx: Any) -> str:
        return list_dir(call, ctx) + "\nextra.txt"

    bound = builtin.assistant.tools["ListDir"]
    monkeypatch.setitem(builtin.assistant.tools, "ListDir", replace_field(bound, handler=different))


def test_changed_tool_fails_with_a_diff(changed_list_dir: None) -> None:
    report = replay(Recording.from_xml(CRAFTED.read_text()), workspace=FIXTURE)
    assert not report.ok
    assert report.diff.startswith("replay diverged at event 5 of 200 (run.tool_result, turn 1):")
    listing = "README.md\\nnotes/\\nsrc/\\n(1 file, 2 folders)"
    assert f'+    "result": "{listing}\\nextra.txt",' in report.diff
    assert f'-    "result": "{listing}",' in report.diff
    with pytest.raises(AssertionError, match="does not replay"):
        assert_replays(CRAFTED, workspace=FIXTURE)


def test_changed_workspace_fails_with_a_diff(workspace: Path) -> None:
    (workspace / "README.md").write_text("# Pebble\n\nversion 2.0\n")
    report = replay(Recording.from_xml(CRAFTED.read_text()), workspace=workspace)
    assert not report.ok and "(run.tool_result, turn 2)" in report.diff


def test_changed_prompt_is_reported_by_hash(tmp_path: Path) -> None:
    recording = Recording.from_xml(CRAFTED.read_text())
    call = next(e for e in recording.events if e.type == "run.model_call")
    sha = call.payload["prompt_sha256"]
    call.payload["prompt_sha256"] = "0" * 64  # as if recorded under another prompt template
    call.payload["counts"] = {"0" * 64: call.payload["prompt_tokens"]}
    report = replay(recording, workspace=FIXTURE)
    assert not report.ok and "prompt hash" in report.diff
    assert "the prompt template or the context changed" in report.diff
    call.payload["counts"] = {sha: call.payload["prompt_tokens"]}
    report = replay(recording, workspace=FIXTURE)
    assert "prompt hash changed" in report.diff and sha in report.diff


def test_truncated_recording_reports_the_extra_turn() -> None:
    recording = Recording.from_xml(CRAFTED.read_text())
    recording.events = recording.events[:9]  # ends after the result of turn 2
    report = replay(recording, workspace=FIXTURE)
    assert not report.ok and "model calls" in report.diff


def test_cli_replay_export_and_agents(tmp_path: Path, bus_file: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(loopbus, ["replay", str(CRAFTED), "--workspace", str(FIXTURE)])
    assert ok.exit_code == 0, ok.output
    assert "matches (50 model calls)" in ok.output
    (tmp_path / "ws").mkdir()
    bad = runner.invoke(loopbus, ["replay", str(CRAFTED), "--workspace", str(tmp_path / "ws")])
    assert bad.exit_code == 1 and "replay diverged at event 5" in bad.output
    missing = runner.invoke(loopbus, ["--bus", str(bus_file), "export", "nope"])
    assert missing.exit_code == 2 and "Error:" in missing.output
    listing = runner.invoke(loopbus, ["agents", "--json"])
    names = {a["name"]: a for a in json.loads(listing.output)}
    assert names["assistant"]["tools"] == ["read_file", "list_dir", "done"]


def test_cli_run_end_to_end(tiny_model_path: Path, bus_file: Path, workspace: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        loopbus,
        [
            "--bus",
            str(bus_file),
            "run",
            "assistant",
            "What is in notes?",
            "--model",
            str(tiny_model_path),
            "--workspace",
            str(workspace),
            "--max-turns",
            "2",
            "--json",
        ],
    )
    lines = [json.loads(line) for line in result.output.splitlines()]
    outcome = lines[-1]
    assert result.exit_code == (0 if outcome["kind"] == "done" else 1)
    assert lines[0]["event_type"] == "run.task" and lines[-2]["event_type"] == "run.outcome"
    exported = runner.invoke(loopbus, ["--bus", str(bus_file), "export", outcome["run_id"]])
    assert exported.exit_code == 0 and exported.output.startswith("<?xml")
    replayed = runner.invoke(loopbus, ["--bus", str(bus_file), "replay", outcome["run_id"]])
    assert replayed.exit_code == 0, replayed.output


def test_replay_loads_no_model() -> None:
    """`loopbus replay` runs in a process that never imports mlx (no model, no tokenizer)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from loopbus.agents.cli import main\n"
        f"args = ['replay', {str(CRAFTED)!r}, '--workspace', {str(FIXTURE)!r}]\n"
        "try:\n"
        "    main.main(args=args, standalone_mode=False)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'transformers')]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_demo_assistant_runs_offline(
    tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loopbus.agents.examples.demo_assistant import run_demo

    status = run_demo(
        FIXTURE, "What is Pebble?", tmp_path / "demo.db", max_turns=2, model=str(tiny_model_path)
    )
    out = capsys.readouterr().out
    assert status in (0, 1) and "task: What is Pebble?" in out
    assert f"loopbus --bus {tmp_path / 'demo.db'} sql" in out


def test_missing_recorded_workspace_is_a_clear_error(tmp_path: Path) -> None:
    from loopbus.agents.errors import AgentError

    recording = Recording.from_xml(CRAFTED.read_text())
    task = recording.events[0].payload
    task["settings"]["workspace"] = str(tmp_path / "gone")
    with pytest.raises(AgentError, match="does not exist here.*--workspace"):
        replay(recording)
