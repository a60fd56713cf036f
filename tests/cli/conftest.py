"""Fixtures for the CLI tests: the real `loopbus` group in-process and as a subprocess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from loopbus.agents.cli import main

Invoke = Callable[..., Result]
Run = Callable[..., subprocess.CompletedProcess[str]]
Spawn = Callable[..., subprocess.Popen[str]]


def clean_env() -> dict[str, str]:
    """The environment for a `loopbus` subprocess: no inherited bus path, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k != "LOOPBUS_BUS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def loopbus_argv(bus: Path | None, *args: str) -> list[str]:
    """argv running the real command line in a fresh interpreter (`--bus BUS` unless None)."""
    bus_option = ["--bus", str(bus)] if bus is not None else []
    return [sys.executable, "-m", "loopbus.agents.cli", *bus_option, *args]


def take_snapshot(path: Path) -> dict[str, bytes]:
    """The stored state of a bus file: the main file's bytes and its write-ahead log's.

    A missing -wal counts as empty (a read-only reader of a WAL file may leave an empty
    one behind), and -shm is left out: it is a shared-memory index, not data.
    """
    if not path.exists():
        return {}
    wal = path.with_name(path.name + "-wal")
    return {"db": path.read_bytes(), "wal": wal.read_bytes() if wal.exists() else b""}


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, bytes]]:
    """`snapshot(path)`: the bytes of a bus file and its -wal/-shm, to prove a command left it alone."""
    return take_snapshot


@pytest.fixture
def invoke(bus_file: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Run `loopbus --bus BUS_FILE ARGS...` in-process with click's CliRunner."""
    monkeypatch.delenv("LOOPBUS_BUS", raising=False)

    def run(*args: str, input: str | None = None, bus: Path | None = None) -> Result:
        argv = ["--bus", str(bus or bus_file), *args]
        return CliRunner().invoke(main, argv, input=input, catch_exceptions=False)

    return run


@pytest.fixture
def run_cli(bus_file: Path, tmp_path: Path) -> Run:
    """Run `loopbus --bus BUS_FILE ARGS...` as a real subprocess (cwd = tmp_path).

    `bus=None` leaves out --bus (the path then comes from `env` or ./loopbus.db).
    """

    def run(
        *args: str,
        input: str | None = None,
        bus: Path | None = bus_file,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = loopbus_argv(bus, *args) if bus is not None else loopbus_argv(None, *args)
        return subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**clean_env(), **(env or {})},
            timeout=60,
        )

    return run


@pytest.fixture
def spawn_cli(bus_file: Path, tmp_path: Path) -> Iterator[Spawn]:
    """Start `loopbus --bus BUS_FILE ARGS...` in the background; killed at teardown if still running."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            loopbus_argv(bus_file, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=clean_env(),
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def populated_bus(bus_file: Path) -> Path:
    """A bus with five events of three types and two consumers (`indexer` at 2, `mailer` at 5)."""
    from loopbus.bus import SyncBus

    with SyncBus(bus_file) as bus:
        bus.publish("file.found", {"path": "README.md"}, agent="scanner")
        bus.publish("file.found", {"path": "bus/core.py"}, agent="scanner")
        bus.publish("finding", {"path": "bus/core.py", "note": "long"}, agent="reviewer")
        bus.publish("run.task", {"goal": "summarize"}, agent="cli", run_id="r1")
        bus.publish("run.decision", {"tool": "RunPython"}, agent="worker", run_id="r1", caused_by=4)
        bus.ack("indexer", 2)
        bus.ack("mailer", 5)
    return bus_file


@pytest.fixture
def newer_bus(bus_file: Path) -> Path:
    """A bus file whose schema version is above what this loopbus knows."""
    from loopbus.bus import SyncBus

    with SyncBus(bus_file) as bus:
        bus.publish("file.found", {"path": "x"})
    with sqlite3.connect(bus_file) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    return bus_file
