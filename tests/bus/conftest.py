"""Fixtures and helpers for the bus tests: real files, real subprocesses."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def helper_cmd(script: str, *args: object) -> list[str]:
    """Command line running one of the helper scripts in tests/bus/ with this interpreter."""
    return [sys.executable, str(HERE / script), *map(str, args)]


def helper_env() -> dict[str, str]:
    """Environment for helper subprocesses: the repo importable, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(script: str, *args: object, **kwargs: object) -> subprocess.Popen[str]:
    """Start a helper script as a real subprocess."""
    return subprocess.Popen(  # type: ignore[call-overload]
        helper_cmd(script, *args), env=helper_env(), cwd=REPO, text=True, **kwargs
    )


def file_state(path: Path) -> tuple[bytes, bytes]:
    """The bytes of a bus file and of its WAL (what a write would change)."""
    wal = Path(str(path) + "-wal")
    return path.read_bytes(), (wal.read_bytes() if wal.exists() else b"")


def raw_rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
    """Read with a plain stdlib sqlite3 connection (independent of the bus code)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def bus_path(tmp_path: Path) -> Path:
    """A fresh bus file path in tmp_path."""
    return tmp_path / "bus.db"


@pytest.fixture
def bh() -> SimpleNamespace:
    """Bus test helpers (importlib import mode: tests cannot import conftest directly)."""
    return SimpleNamespace(
        spawn=spawn,
        file_state=file_state,
        raw_rows=raw_rows,
        helper_cmd=helper_cmd,
        helper_env=helper_env,
        repo=REPO,
    )
