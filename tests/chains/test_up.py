"""`loopbus up`: real agent processes, restarts after SIGKILL, clean stop, giving up loudly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from chain_helpers import loopbus, make_workspace, read_status, spawn, wait_for, write_chain

from loopbus.agents.chains.supervisor import state_dir_for
from loopbus.bus import SyncBus

ONE_AGENT = """
[agents.checker]
subscribe = ["file.found"]
task = "Check {payload[path]}"
max_turns = 1
budget = 1.0
emit = "review.done"
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_up_restarts_a_killed_agent_and_stops_cleanly(
    tmp_path: Path, tiny_model_path: Path, bus_file: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", 2)
    cfg = write_chain(
        tmp_path / "chain.toml",
        ONE_AGENT,
        model=tiny_model_path,
        workspace=ws,
        output=tmp_path / "out",
    )
    log = tmp_path / "up.log"
    up = spawn("--bus", str(bus_file), "up", str(cfg), "--no-live", log=log)
    status = state_dir_for(bus_file) / "checker.status.json"
    try:
        first = wait_for(
            lambda: read_status(status).get("state") == "idle" and read_status(status),
            60,
            "the agent to start",
        )["pid"]
        os.kill(first, signal.SIGKILL)
        second = wait_for(
            lambda: (
                (s := read_status(status)).get("state") == "idle" and s["pid"] != first and s["pid"]
            ),
            60,
            "the agent to be restarted",
        )
        with SyncBus(bus_file) as bus:
            event = bus.publish("file.found", {"path": "mod00.py", "scan": 1, "total": 1})
            done = wait_for(lambda: bus.events(types=["review.done"]), 60, "the restarted agent")
        assert done[0].payload["trigger_id"] == event
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
    output = log.read_text()
    assert "checker: exited with code -9; restarting in 0.5 s" in output, output
    assert not alive(first) and not alive(second)


@pytest.mark.slow
def test_up_gives_up_loudly_after_repeated_crashes(tmp_path: Path, bus_file: Path) -> None:
    # A model directory that passes validation (it has a config.json) but cannot load:
    # every start of the agent process crashes.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ws = make_workspace(tmp_path / "ws", 1)
    cfg = write_chain(
        tmp_path / "chain.toml", ONE_AGENT, model=broken, workspace=ws, output=tmp_path / "out"
    )
    proc = subprocess.run(
        loopbus("--bus", str(bus_file), "up", str(cfg), "--no-live", "--max-crashes", "2"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Error: agent checker crashed 2 times in 60 s" in proc.stderr
    assert "giving up" in proc.stdout
    assert "Log:" in proc.stderr


def test_up_refuses_an_invalid_config(tmp_path: Path, bus_file: Path) -> None:
    cfg = tmp_path / "chain.toml"
    cfg.write_text('[agents.nobody]\nsubscribe = ["x"]\n')
    proc = subprocess.run(
        loopbus("--bus", str(bus_file), "up", str(cfg)), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: agent 'nobody'")
    assert "unknown kind 'nobody'" in proc.stderr
    proc = subprocess.run(
        loopbus("--bus", str(bus_file), "agent", "ghost", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert "agent 'ghost' is not in chain" in proc.stderr


def test_up_until_idle_with_the_live_view(
    tmp_path: Path, tiny_model_path: Path, bus_file: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", 2)
    cfg = write_chain(
        tmp_path / "chain.toml", ONE_AGENT, model=tiny_model_path, workspace=ws, output=ws
    )
    with SyncBus(bus_file) as bus:
        bus.publish("file.found", {"path": "mod00.py", "scan": 1, "total": 1})
        bus.publish("file.found", {"path": "mod01.py", "scan": 1, "total": 1})
    proc = subprocess.run(
        loopbus(
            "--bus", str(bus_file), "up", str(cfg), "--until-idle", "--live", "--timeout", "90"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "chain test" in proc.stdout  # the status table's title
    assert "review.done" in proc.stdout  # the events panel
    assert "chain idle: every event handled" in proc.stdout
    with SyncBus(bus_file) as bus:
        assert len(bus.events(types=["review.done"])) == 2
        assert {c.consumer: c.last_seen_id for c in bus.cursors()}["checker"] >= 2
