"""Bus commands must start fast: they never import the model runtime, BAML or the sandbox."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Top-level packages a bus command must never load (each costs 100 ms to seconds to import).
HEAVY = {
    "mlx",
    "mlx_lm",
    "baml_py",
    "loopbus.baml_client",
    "wasmtime",
    "transformers",
    "tokenizers",
    "llguidance",
    "gguf",
    "numpy",
    "torch",
    "loopbus.models",
}


def _package(module: str) -> str:
    """The top-level package of a module; loopbus's own by subpackage (loopbus.bus, ...)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "loopbus" else parts[0]


def imported_packages(*args: str, cwd: Path) -> set[str]:
    """Top-level packages imported by `python -X importtime -m loopbus.agents.cli ARGS...` (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "loopbus.agents.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = {
        _package(line.rsplit("|", 1)[-1].strip())
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "loopbus.agents" in names and "click" in names  # the parse found the real import list
    return names


@pytest.mark.parametrize("command", ["publish", "tail", "sql", "cursors", "prune"])
def test_help_imports_nothing_heavy(command: str, tmp_path: Path) -> None:
    names = imported_packages(command, "--help", cwd=tmp_path)
    assert not names & HEAVY, names & HEAVY
    assert "rich" not in names  # only printing a table loads rich


def test_running_bus_commands_imports_nothing_heavy(tmp_path: Path) -> None:
    bus = str(tmp_path / "bus.db")
    publish = imported_packages("--bus", bus, "publish", "file.found", '{"a": 1}', cwd=tmp_path)
    assert "loopbus.bus" in publish and not publish & HEAVY, publish & HEAVY
    tail = imported_packages("--bus", bus, "tail", "--json", cwd=tmp_path)
    assert not tail & HEAVY and "rich" not in tail, tail & (HEAVY | {"rich"})
    table = imported_packages("--bus", bus, "sql", "SELECT count(*) FROM outbox", cwd=tmp_path)
    assert "rich" in table and not table & HEAVY, table & HEAVY
