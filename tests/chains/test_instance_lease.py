"""One live process per agent instance: a second `loopbus up` (or `loopbus agent`) on the same
bus is refused with a clear error instead of duplicating runs, and a killed instance's
restart gets its lease back at once."""

from __future__ import annotations

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


@pytest.mark.slow
def test_second_up_and_second_agent_are_refused(
    tmp_path: Path, tiny_model_path: Path, bus_file: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", 2)
    cfg = write_chain(
        tmp_path / "chain.toml", ONE_AGENT, model=tiny_model_path, workspace=ws, output=tmp_path
    )
    up = spawn("--bus", str(bus_file), "up", str(cfg), "--no-live", log=tmp_path / "up.log")
    status = state_dir_for(bus_file) / "checker.status.json"
    try:
        first = wait_for(
            lambda: read_status(status).get("state") == "idle" and read_status(status),
            60,
            "the agent to start",
        )["pid"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        second = subprocess.run(
            loopbus("--bus", str(bus_file), "up", str(cfg), "--no-live", "--until-idle"),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"Error: checker is already running on the bus {bus_file}" in second.stderr
        assert f"pid {first} on host" in second.stderr
        by_hand = subprocess.run(
            loopbus("--bus", str(bus_file), "agent", "checker", "--config", str(cfg)),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert by_hand.returncode == 2, by_hand.stdout + by_hand.stderr
        assert "Error: checker is already running" in by_hand.stderr
        assert "loading model" not in by_hand.stdout  # refused before any work

        # The first chain still owns the agent and does the work, once.
        os.kill(first, signal.SIGKILL)  # its restart takes the lease back
        with SyncBus(bus_file) as bus:
            bus.publish("file.found", {"path": "mod00.py", "scan": 1, "total": 1})
            wait_for(lambda: bus.events(types=["review.done"]), 60, "the restarted agent")
            assert len(bus.events(types=["run.outcome"])) == 1
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
