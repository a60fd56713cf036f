"""Helpers shared by the chain tests (imported as `chain_helpers`; conftest puts this folder on
sys.path because pytest runs with --import-mode=importlib)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def make_workspace(root: Path, count: int) -> Path:
    """``count`` small python modules (every third has a TODO) plus one test file."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        body = f'"""Module {i}."""\n\n\ndef f{i}() -> int:\n'
        if i % 3 == 0:
            body += f"    # TODO: handle case {i}\n"
        body += f"    return {i}\n"
        (root / f"mod{i:02d}.py").write_text(body, encoding="utf-8")
    (root / "test_mod01.py").write_text("def test_one() -> None:\n    pass\n", encoding="utf-8")
    return root


def write_chain(path: Path, text: str, *, model: Path, workspace: Path, output: Path) -> Path:
    """A chain config whose [chain] table points at the tiny model and the given folders."""
    head = (
        f'[chain]\nname = "test"\nmodel = "{model}"\nworkspace = "{workspace}"\n'
        f'output = "{output}"\n\n'
    )
    path.write_text(head + text, encoding="utf-8")
    return path


def loopbus(*args: str) -> list[str]:
    """argv running the loopbus CLI with this interpreter."""
    return [sys.executable, "-m", "loopbus.agents.cli", *args]


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start a loopbus command in the background, output to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as fh:
        return subprocess.Popen(
            loopbus(*args),
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def read_status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# The crash and cross-host tests' chain: checker (2 processes) -> digester -> tally. checker
# and digester are one-decision agents; tally (a `reporter` under another name) has write_report as its forced first decision, then
# one model decision. So the tiny random model cannot change what a run does, and `emit`
# makes each stage's fan-out exactly-once.
CRASH_CHAIN = """
[agents.checker]
subscribe = ["file.found"]
task = "Check {payload[path]}"
max_turns = 1
budget = 1.0
emit = "review.done"
parallelism = 2

[agents.digester]
subscribe = ["review.done"]
task = "Digest {payload[path]}"
max_turns = 1
budget = 1.0
emit = "digest.done"

[agents.tally]
kind = "reporter"
subscribe = ["digest.done"]
task = "Update the report"
first_tool = "write_report"
max_turns = 2
budget = 1.0
"""
