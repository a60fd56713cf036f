"""A run's RunPython sandbox limits are its own: recorded in its ``run.task`` settings (when they
are not the agent's default), used by resume and by a replay in a fresh process, and never
shared with another run of the same agent."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from loopbus.agents.chains.worker import FirstDecision
from loopbus.agents.run import turn
from loopbus.agents.run.loop import run_agent
from loopbus.agents.run.replay import Recording, export_run, replay
from loopbus.agents.run.state import RunSettings
from loopbus.agents.sandbox.types import SandboxLimits
from loopbus.agents.tools.python import limits_for

LOOP = "x = 0\nfor i in range(100000):\n    x += i\nprint(x)"
TIGHT = SandboxLimits(fuel=2_000_000)
LOOPBUS = Path(sys.executable).parent / "loopbus"


def _coder_run(runtime: Any, bus: Any, workspace: Path, run_id: str, **kwargs: Any) -> Any:
    """One turn of ``coder`` whose decision is to run LOOP; the run's last tool event."""
    scripted = FirstDecision(runtime, {"action": "run_python", "code": LOOP})
    outcome = run_agent(
        "coder", "sum", runtime=scripted, bus=bus, workspace=workspace, max_turns=1,
        run_id=run_id, **kwargs,
    )  # fmt: skip
    assert outcome.kind == "max_turns"
    return bus.events(run_id=run_id, types=["run.tool_result", "run.error"])[-1]


def _settings(bus: Any, run_id: str) -> dict[str, Any]:
    return bus.events(run_id=run_id, types=["run.task"])[0].payload["settings"]


def test_custom_limits_are_recorded_and_replay_in_a_fresh_process(
    tiny_runtime: Any, bus: Any, workspace: Path, tmp_path: Path
) -> None:
    trapped = _coder_run(tiny_runtime, bus, workspace, "r-tight", sandbox=TIGHT)
    assert trapped.event_type == "run.error"
    assert "2,000,000 wasm instructions" in trapped.payload["error"]
    assert _settings(bus, "r-tight")["sandbox"] == asdict(TIGHT)

    # Resume reads them back with the run (a crashed run's next snippet has the same limits).
    state, _ = turn.rebuild(bus, "r-tight", runtime=tiny_runtime)
    try:
        assert state.settings.sandbox == TIGHT and limits_for(state.ctx) == TIGHT
    finally:
        state.ctx.close()

    # `loopbus replay` of the export in a fresh process traps the same way: nothing set in
    # this process reaches it, only the recording.
    recording = tmp_path / "tight.xml"
    recording.write_text(export_run(bus, "r-tight"))
    done = subprocess.run(
        [str(LOOPBUS), "replay", str(recording), "--workspace", str(workspace), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["ok"] is True

    # Without the recorded limits the snippet fits: the replay diverges at the tool's result,
    # so the replay above did run under the recorded limits.
    changed = Recording.from_xml(recording.read_text())
    del changed.task_event.payload["settings"]["sandbox"]
    report = replay(changed, workspace=workspace)
    assert not report.ok and "4999950000" in report.diff


def test_two_runs_of_one_agent_keep_their_own_limits(
    tiny_runtime: Any, bus: Any, workspace: Path
) -> None:
    # Interleaved in one process: the tight run, a default one, the tight one's limits again.
    assert _coder_run(tiny_runtime, bus, workspace, "r-a", sandbox=TIGHT).event_type == "run.error"
    fitted = _coder_run(tiny_runtime, bus, workspace, "r-b")
    assert (fitted.event_type, fitted.payload["result"]) == ("run.tool_result", "4999950000")
    big = SandboxLimits(fuel=3_000_000_000)
    roomy = _coder_run(tiny_runtime, bus, workspace, "r-c", sandbox=big)
    assert roomy.payload["result"] == "4999950000"
    assert _coder_run(tiny_runtime, bus, workspace, "r-d", sandbox=TIGHT).event_type == "run.error"
    assert _settings(bus, "r-c")["sandbox"] == asdict(big)
    # A run with the agent's default limits records what runs always did: no sandbox key.
    assert "sandbox" not in _settings(bus, "r-b")
    _coder_run(tiny_runtime, bus, workspace, "r-e", sandbox=SandboxLimits())
    assert _settings(bus, "r-e") == _settings(bus, "r-b")


@pytest.mark.parametrize(
    "limits", [{"fuel": 1}, {"fuel": "lots"}, {"wall_clock_s": -1}, "tight"]
)  # fmt: skip
def test_forged_recorded_limits_are_a_validation_error(limits: Any) -> None:
    # A malformed run.task (resume ends the run failed), never a crash of the reader.
    with pytest.raises(ValidationError, match="sandbox"):
        RunSettings.model_validate({"agent": "coder", "function": "Coder", "sandbox": limits})


def test_run_sandbox_options_override_the_agents_own_default(
    tmp_path: Path, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`loopbus run --sandbox-fuel` changes the fuel of the agent's own limits; the rest stay."""
    from click.testing import CliRunner

    from loopbus.agents.cli import main
    from loopbus.bus import SyncBus

    (tmp_path / "limited_coder.py").write_text(
        "import dataclasses\n"
        "from loopbus.agents.builtin import coder\n"
        "from loopbus.agents.sandbox.types import MiB, SandboxLimits\n"
        "limited = dataclasses.replace(\n"
        "    coder, name='limited', sandbox=SandboxLimits(memory_bytes=32 * MiB, wall_clock_s=3.0)\n"
        ")\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    bus_file = tmp_path / "bus.db"
    args = ["--bus", str(bus_file), "run", "limited_coder:limited", "sum", "--run-id", "lim"]
    args += ["--model", str(tiny_model_path), "--max-turns", "1", "--sandbox-fuel", "3000000"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), result.output
    with SyncBus(bus_file) as bus:
        recorded = _settings(bus, "lim")["sandbox"]
    expected = SandboxLimits(fuel=3_000_000, memory_bytes=32 * 1024 * 1024, wall_clock_s=3.0)
    assert SandboxLimits(**recorded) == expected
