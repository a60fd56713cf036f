"""A user's chain agent (``kind = "mypkg.agents:reviewer"``, configured under another name) runs
in a real agent process; its runs record the reference, so ``loopbus export`` and ``loopbus
replay`` in fresh processes find the agent and its tools again (there is no registry to fill)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from chain_helpers import REPO, loopbus, make_workspace, write_chain

from loopbus.agents.run.replay import Recording
from loopbus.bus import SyncBus

# The user's tool reads what earlier runs published (declared in `reads`, so an export carries
# those events) and says so in its result: a replay that found another agent's tool, or no
# reads, diverges.
USER_AGENTS = """
from loopbus.agents.agent import Agent

reviewer = Agent("reviewer", "loopbus.baml_client", "Reviewer", "counts lines", max_tokens=48)


@reviewer.tool(cls="CheckFile", reads=["line.count"])
def count_lines(call, ctx):
    path = ctx.trigger().payload["path"]
    before = len(ctx.bus.events(types=["line.count"]))
    lines = len(ctx.read_text(path).splitlines())
    ctx.publish("line.count", {"path": path, "lines": lines})
    return f"{path}: {lines} lines ({before} counted before)"
"""

CHAIN = """
[agents.counter]
kind = "mypkg.agents:reviewer"
subscribe = ["file.found"]
task = "Count the lines of {payload[path]}"
first_tool = "check_file"
max_turns = 1
budget = 1.0
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A loopbus command in a fresh process (only ``cwd`` makes the user's package importable)."""
    return subprocess.run(
        loopbus(*args), cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_users_chain_agent_replays_in_a_fresh_process(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "mypkg").mkdir(parents=True)
    (project / "mypkg" / "__init__.py").write_text("")
    (project / "mypkg" / "agents.py").write_text(USER_AGENTS)
    ws = make_workspace(tmp_path / "ws", 2)
    config = write_chain(
        project / "chain.toml", CHAIN, model=tiny_model_path, workspace=ws, output=tmp_path / "out"
    )
    bus_file = tmp_path / "bus.db"
    with SyncBus(bus_file) as bus:
        for name in ("mod00.py", "mod01.py"):
            bus.publish("file.found", {"path": name})

    served = _cli(
        "--bus", str(bus_file), "agent", "counter", "--config", str(config),
        "--exit-when-idle", "2", cwd=project,
    )  # fmt: skip
    assert served.returncode == 0, served.stdout + served.stderr

    with SyncBus(bus_file) as bus:
        tasks = bus.events(types=["run.task"])
        results = [e.payload["result"] for e in bus.events(types=["run.tool_result"])]
    assert len(tasks) == 2
    for task in tasks:  # recorded under the configured name, with the reference to find it by
        assert task.agent == "counter"
        assert task.payload["settings"]["agent"] == "counter"
        assert task.payload["settings"]["agent_ref"] == "mypkg.agents:reviewer"
    assert results == [
        "mod00.py: 6 lines (0 counted before)",
        "mod01.py: 5 lines (1 counted before)",
    ]

    second = tasks[1].run_id
    recording = tmp_path / "second.xml"
    exported = _cli("--bus", str(bus_file), "export", second, "-o", str(recording), cwd=project)
    assert exported.returncode == 0, exported.stderr
    context = Recording.from_xml(recording.read_text()).context
    # The first run's line.count is in the recording: the agent's `reads` were found.
    assert [(e.type, e.payload["path"]) for e in context] == [
        ("file.found", "mod01.py"),
        ("line.count", "mod00.py"),
    ]

    replayed = _cli("replay", str(recording), "--json", cwd=project)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["ok"] and report["outcome"]["run_id"] == second
    # The same from the bus (no export), again in a fresh process.
    from_bus = _cli("--bus", str(bus_file), "replay", tasks[0].run_id, cwd=project)
    assert from_bus.returncode == 0, from_bus.stdout + from_bus.stderr

    # Where the user's package is not importable, the reference says what is missing.
    elsewhere = _cli("replay", str(recording), cwd=REPO)
    assert elsewhere.returncode != 0
    assert "cannot import 'mypkg.agents' for agent 'mypkg.agents:reviewer'" in elsewhere.stderr
