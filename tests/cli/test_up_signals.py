"""`loopbus up` outside a terminal: timestamped plain lines; Ctrl-C exits 130, SIGTERM 0."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopbus.agents.chains.supervisor import state_dir_for

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def start_up(tmp_path: Path, model: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[chain]\nname = "{name}"\nmodel = "{model}"\n\n'
        '[agents.answer]\nsubscribe = ["question"]\ntask = "{payload[q]}"\nmax_turns = 1\n',
        encoding="utf-8",
    )
    bus = tmp_path / f"{name}.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopbus.agents.cli", "--bus", str(bus), "up", str(config)]
        + ["--status-every", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    return proc, bus


def wait_until_idle(bus: Path, proc: subprocess.Popen[str]) -> None:
    status = state_dir_for(bus) / "answer.status.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if status.exists() and '"idle"' in status.read_text(encoding="utf-8"):
            time.sleep(0.7)  # a status line or two after it went idle
            return
        time.sleep(0.1)
    raise AssertionError(f"the agent never went idle (up exited {proc.poll()})")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_up_prints_plain_lines_and_exits_130_on_ctrl_c_0_on_sigterm(
    tmp_path: Path, tiny_model_path: Path, sig: signal.Signals, code: int
) -> None:
    proc, bus = start_up(tmp_path, tiny_model_path, sig.name.lower())
    try:
        wait_until_idle(bus, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, (out, err)
    lines = out.splitlines()
    assert lines[-1] == "stopped all agents", out
    assert re.fullmatch(STAMP + r" \[up\] answer: started pid \d+", lines[0]), out
    statuses = [line for line in lines if re.match(STAMP + r" \[status\] \d+s: answer ", line)]
    assert len(statuses) >= 2 and any("answer idle" in line for line in statuses), out
    assert "\x1b[" not in out  # no live view, no terminal escapes
