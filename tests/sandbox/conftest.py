"""Sandbox fixtures: one compiled-module cache per test session (compiled once, ~1 s)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopbus.agents.sandbox.core import Sandbox, SandboxLimits, get_runtime


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LOOPBUS_CACHE root whose wasm/ cache is filled once for the whole session."""
    root = tmp_path_factory.mktemp("loopbus-cache")
    get_runtime(root / "wasm")
    return root


@pytest.fixture(scope="session")
def cache_dir(cache_root: Path) -> Path:
    return cache_root / "wasm"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A small workspace directory to mount at /input."""
    ws = tmp_path / "ws"
    (ws / "docs").mkdir(parents=True)
    (ws / "notes.txt").write_text("alpha\nbeta\n")
    (ws / "docs" / "a.json").write_text('{"title": "A", "n": 3}')
    (tmp_path / "secret.txt").write_text("outside the workspace")
    return ws


@pytest.fixture
def make_sandbox(cache_dir: Path) -> Iterator:
    """Factory for sandboxes that share the session cache; all are closed after the test."""
    made: list[Sandbox] = []

    def make(limits: SandboxLimits | None = None, **kwargs: object) -> Sandbox:
        box = Sandbox(limits, cache_dir=cache_dir, **kwargs)  # type: ignore[arg-type]
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()


@pytest.fixture
def sandbox(make_sandbox) -> Sandbox:  # type: ignore[no-untyped-def]
    return make_sandbox()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Each test must leave no guest threads behind (the host process stays clean)."""
    yield
    for thread in threading.enumerate():
        if thread.name == "sandbox-guest":
            thread.join(timeout=2.0)
    leaked = [t for t in threading.enumerate() if t.name == "sandbox-guest"]
    assert not leaked, f"guest threads still running: {leaked}"
