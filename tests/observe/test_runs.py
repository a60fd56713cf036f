"""`loopbus runs` and `loopbus show`: runs listed and rebuilt turn by turn from the bus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from loopbus.agents.cli import main
from loopbus.agents.observe.runs import (
    PromptUnavailable,
    RunNotFound,
    list_runs,
    load_timeline,
    rebuild_prompt,
)

from .conftest import ObservedBus


def _cli(observed: ObservedBus, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--bus", str(observed.path), *args])
    return result.exit_code, result.stdout, result.stderr


def test_runs_lists_and_filters(observed: ObservedBus) -> None:
    runs = list_runs(observed.path)
    assert {r.run_id: r.outcome for r in runs} == observed.outcomes
    assert [r.started_at for r in runs] == sorted((r.started_at for r in runs), reverse=True)
    code, out, _ = _cli(observed, "runs", "--json", "--agent", "watcher")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["agent"], r["outcome"], r["turns"]) for r in rows] == [("watcher", "done", 2)]
    code, out, _ = _cli(observed, "runs", "--outcome", "max_turns")
    assert code == 0 and observed.run_of("max_turns") in out
    assert observed.run_of("done") not in out
    code, out, _ = _cli(observed, "runs", "--outcome", "running")
    assert (code, out.strip()) == (0, "(no runs)")
    code, out, _ = _cli(observed, "runs", "-n", "2", "--json")
    assert len(out.splitlines()) == 2


def test_show_prints_every_turn(observed: ObservedBus) -> None:
    run = next(r for r in observed.outcomes if len(observed.prompts[r]) == 4)
    timeline = load_timeline(observed.path, run)
    actions = [t.action for t in timeline.turns]
    assert actions[:2] == ["list_dir", "read_file"] and actions[3] == "done"
    # Reading a missing file is a tool error, or an answer refused before it runs (a policy
    # that knows the workspace's files): either way turn 3 shows the error.
    assert "missing.txt" in (timeline.turns[2].error or "")
    assert "Pebble" in str(timeline.turns[1].result)
    window = timeline.context_window
    for turn in timeline.turns:
        assert turn.fill == pytest.approx(turn.prompt_tokens / window)
    code, out, err = _cli(observed, "show", run)
    assert code == 0, err
    assert "budget 40%" in out and f"context window {window} tokens" in out
    for turn in timeline.turns:
        assert f"turn {turn.number}" in out
        assert f"prompt {turn.prompt_tokens} tokens = {turn.fill:.1%}" in out
    assert "missing.txt" in out.split("turn 3")[1].split("turn 4")[0]
    assert "outcome: done  Pebble is at version 2.3" in out
    code, out, _ = _cli(observed, "show", run, "--json")
    data = json.loads(out)
    assert [t["number"] for t in data["turns"]] == [1, 2, 3, 4]
    assert data["outcome"]["kind"] == "done" and data["budget"] == 0.4


def test_show_prompt_is_exactly_what_the_model_got(observed: ObservedBus) -> None:
    for run, prompts in observed.prompts.items():
        timeline = load_timeline(observed.path, run)
        assert len(timeline.turns) == len(prompts)
        for number, sent in enumerate(prompts, start=1):
            assert rebuild_prompt(timeline, number) == sent, (run, number)
        # The template is stored once per run, the sha256 on every call.
        calls = [e.payload for e in timeline.events if e.event_type == "run.model_call"]
        assert ["prompt_template" in c for c in calls] == [True] + [False] * (len(calls) - 1)
        assert len({c["prompt_template_sha256"] for c in calls}) == 1
    elided = next(r for r in observed.outcomes if len(observed.prompts[r]) == 6)
    assert load_timeline(observed.path, elided).turns[-1].elided > 0  # elision was rebuilt too
    run = observed.run_of("done")
    code, out, _ = _cli(observed, "show", run, "--prompt", "2", "--json")
    assert code == 0 and json.loads(out) == observed.prompts[run][1]
    code, out, _ = _cli(observed, "show", run, "--prompt", "2")
    assert "--- system ---" in out and '"tool":"list_dir"' in out


def test_a_prompt_that_does_not_match_its_hash_is_refused(
    observed: ObservedBus, tmp_path: Path
) -> None:
    from loopbus.bus import NewEvent, SyncBus

    run = observed.run_of("done")
    events = load_timeline(observed.path, run).events
    forged = tmp_path / "forged.db"
    with SyncBus(forged) as bus:
        rows = []
        for e in events:
            payload = e.payload
            if e.event_type == "run.model_call" and "prompt_template" in payload:
                template = [dict(m) for m in payload["prompt_template"]]
                template[0]["content"] += " Always answer in French."
                payload = {**payload, "prompt_template": template}
            rows.append(
                NewEvent(event_type=e.event_type, payload=payload, agent=e.agent, run_id=run)
            )
        bus.publish_many(rows)
    timeline = load_timeline(forged, run)
    with pytest.raises(PromptUnavailable, match="does not match the recorded hash"):
        rebuild_prompt(timeline, 1)
    with pytest.raises(PromptUnavailable, match="no model call for turn 9"):
        rebuild_prompt(load_timeline(observed.path, run), 9)


def test_unknown_run_and_missing_bus_are_clear_errors(
    observed: ObservedBus, tmp_path: Path
) -> None:
    with pytest.raises(RunNotFound):
        load_timeline(observed.path, "nope")
    code, _, err = _cli(observed, "show", "nope")
    assert code != 0 and err.startswith("Error: no run 'nope' on this bus")
    code, _, err = _cli(observed, "show", observed.run_of("done"), "--prompt", "9")
    assert code != 0 and "Error: run" in err and "no model call for turn 9" in err
    missing = tmp_path / "none.db"
    result = CliRunner().invoke(main, ["--bus", str(missing), "runs"])
    assert result.exit_code != 0 and result.stderr.startswith("Error: no bus file")
    assert not missing.exists()


def test_reading_never_writes(observed: ObservedBus, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    shutil.copy(observed.path, copy)
    before = copy.read_bytes()
    runs = list_runs(copy)
    for run in runs:
        load_timeline(copy, run.run_id)
    assert copy.read_bytes() == before


def test_a_run_without_outcome_is_running(observed: ObservedBus, tmp_path: Path) -> None:
    from loopbus.agents.observe.report import build_report
    from loopbus.bus import SyncBus

    bus_file = tmp_path / "bus.db"
    shutil.copy(observed.path, bus_file)
    task = {"task": "interrupted", "settings": {"agent": "watcher", "function": "Watcher"}}
    with SyncBus(bus_file) as bus:  # what a run killed after its first event leaves
        bus.publish("run.task", task, agent="watcher", run_id="watcher-crashed")
    code, out, _ = _cli(ObservedBus(bus_file, observed.workspace), "runs", "--outcome", "running")
    assert code == 0 and "watcher-crashed" in out and "running" in out
    timeline = load_timeline(bus_file, "watcher-crashed")
    assert timeline.outcome is None and timeline.turns == []
    page = build_report(bus_file)
    assert page.count('class="run"') == len(observed.outcomes) + 1
    assert "running" in build_report(bus_file, "watcher-crashed")


def test_observing_imports_no_model_runtime(observed: ObservedBus) -> None:
    import subprocess
    import sys

    run = observed.run_of("done")
    code = (
        "import sys\n"
        "from loopbus.agents.cli import main\n"
        f"for args in (['runs'], ['show', {run!r}], ['show', {run!r}, '--prompt', '1'],"
        f" ['report', {run!r}, '-o', '/dev/null']):\n"
        f"    main(['--bus', {str(observed.path)!r}, *args], standalone_mode=False)\n"
        "heavy = [m for m in ('mlx', 'baml_py', 'baml_client', 'wasmtime') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
