"""Backends of the store contract suite: every test here runs once per backend.

A backend fixture yields a *target*: the URL a process passes to ``bus.open`` (a file path
for SQLite; for PostgreSQL a fresh schema in the ``test`` database of the server on
127.0.0.1:5432, dropped after the test). ``open_bus`` opens it (closing everything at
teardown), ``spawn_writer`` starts a real writer process against it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent.parent.parent

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty bus of each backend, as the address processes open it by."""
    if request.param == "sqlite":
        yield str(tmp_path / "bus.db")
    elif request.param == "postgres":
        from loopbus.bus.postgres.testing import fresh_schema

        with fresh_schema() as url:
            yield url
    else:  # pragma: no cover - every backend in BACKENDS is handled above
        raise AssertionError(request.param)


def _open(target: str, **options: Any) -> Any:
    from loopbus import bus

    return bus.open(target, **options)


@pytest.fixture
def open_bus(target: str) -> Iterator[Callable[..., Any]]:
    """``open_bus(**options)``: a new connection to the test's bus (closed at teardown)."""
    opened: list[Any] = []

    def opener(**options: Any) -> Any:
        bus = _open(target, **options)
        opened.append(bus)
        return bus

    yield opener
    for bus in reversed(opened):
        bus.close()


@pytest.fixture
def one_bus(open_bus: Callable[..., Any]) -> Any:
    """One connection to the test's bus (shared by a hypothesis test's examples)."""
    return open_bus()


@pytest.fixture
def spawn_writer(target: str) -> Callable[..., subprocess.Popen[str]]:
    """``spawn_writer(name, count)``: a real process publishing ``count`` events;
    ``spawn_writer(name, 0, "lease_proc.py")``: one holding lease ``name`` until killed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")

    def spawn(name: str, count: int, script: str = "writer_proc.py") -> subprocess.Popen[str]:
        args = [name] if script == "lease_proc.py" else [name, str(count)]
        return subprocess.Popen(
            [sys.executable, str(HERE / script), target, *args],
            env=env,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    return spawn
