"""Plain progress lines (agents/observe/progress.py) show terminal escapes from the bus, a status
file or a supervisor message as visible text: an agent name or a run id is anyone's to choose."""

from __future__ import annotations

from pathlib import Path

from loopbus.agents.chains.config import load_config
from loopbus.agents.chains.supervisor import Supervisor
from loopbus.agents.observe.progress import ChainProgress
from loopbus.bus import SyncBus

REPO = Path(__file__).resolve().parents[2]
ESC = "\x1b]0;owned\x07\x1b[2J\u202e"


def test_outcome_status_and_supervisor_lines_neutralise_escapes(tmp_path: Path) -> None:
    bus_file = tmp_path / "bus.db"
    with SyncBus(bus_file) as bus:
        bus.publish("run.outcome", {"kind": f"done{ESC}"}, agent=f"evil{ESC}", run_id=f"r{ESC}")
    sup = Supervisor(load_config(REPO / "agents" / "examples" / "review.toml"), bus_file)
    sup.slots[0].status = {"run_id": f"scan{ESC}"}  # what a worker's status file says
    lines: list[str] = []
    progress = ChainProgress(bus_file, lines.append, every=0)
    progress.log(f"reviewer#0/2 exited: {ESC}")
    progress(sup)
    progress.finish(sup)
    text = "\n".join(lines)
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in text, lines
    shown = "\\x1b]0;owned\\x07\\x1b[2J\\u202e"
    assert f"[up] reviewer#0/2 exited: {shown}" in lines[0]
    run_line = next(line for line in lines if "[run]" in line)
    assert f"[run] evil{shown} r{shown} done{shown}: " in run_line
    status = next(line for line in lines if "[status]" in line)
    assert f"scan{shown}" in status and f"outcomes: done{shown} 1" in status
