"""`loopbus up` gives up on an agent that keeps crashing, and only on it: the healthy agents
keep running, and the exit status at the end reports the failure."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from chain_helpers import make_workspace, spawn, wait_for, write_chain

from loopbus.bus import SyncBus

CHAIN = """
[agents.checker]
subscribe = ["file.found"]
task = "Check {{payload[path]}}"
max_turns = 1
budget = 1.0
emit = "review.done"

[agents.crasher]
kind = "checker"
model = "{broken}"
subscribe = ["never.sent"]
max_turns = 1
"""


@pytest.mark.slow
def test_up_gives_up_only_on_the_crashing_agent(
    tmp_path: Path, tiny_model_path: Path, bus_file: Path
) -> None:
    # A model directory that passes validation (it has a config.json) but cannot load: every
    # start of `crasher` crashes, while `checker` runs the tiny model.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ws = make_workspace(tmp_path / "ws", 2)
    cfg = write_chain(
        tmp_path / "chain.toml",
        CHAIN.format(broken=broken),
        model=tiny_model_path,
        workspace=ws,
        output=tmp_path / "out",
    )
    log = tmp_path / "up.log"
    up = spawn("--bus", str(bus_file), "up", str(cfg), "--no-live", "--max-crashes", "2", log=log)
    try:
        wait_for(lambda: "giving up" in log.read_text(), 90, "up to give up on crasher")
        # Only now the healthy agent gets work: it must still be running.
        with SyncBus(bus_file) as bus:
            event = bus.publish("file.found", {"path": "mod00.py"})
            done = wait_for(lambda: bus.events(types=["review.done"]), 60, "the healthy agent")
        assert done[0].payload["trigger_id"] == event
        assert up.poll() is None  # still supervising
        up.send_signal(signal.SIGTERM)
        code = up.wait(30)
    finally:
        if up.poll() is None:
            up.kill()
    output = log.read_text()
    assert code == 1, output  # the failure shows in the exit status, even after SIGTERM
    assert "crasher: crashed 2 times in 60 s; giving up on it" in output, output
    assert "Error: agent crasher crashed 2 times in 60 s" in output
    assert "Log:" in output
    assert "checker: exited" not in output  # the healthy agent was never restarted or stopped
