"""Fixtures of the agent-loop tests: real runtimes (tiny MLX model, embedded SmolLM2), real buses."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURE_WORKSPACE = Path(__file__).resolve().parents[1] / "fixtures" / "workspace"
RUNS = Path(__file__).resolve().parents[1] / "runs"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A private copy of tests/fixtures/workspace (tests may change it)."""
    dest = tmp_path / "workspace"
    shutil.copytree(FIXTURE_WORKSPACE, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_runtime(tiny_model_path: Path) -> Any:
    """The tiny random-weights model, loaded once (constrained decoding keeps it schema-valid)."""
    from loopbus.models import load_runtime

    return load_runtime(str(tiny_model_path))


@pytest.fixture
def bus(bus_file: Path) -> Iterator[Any]:
    """A SyncBus on a fresh file."""
    from loopbus.bus import SyncBus

    with SyncBus(bus_file) as opened:
        yield opened
