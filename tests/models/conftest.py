"""Fixtures for the model-runtime tests: the tiny real model loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_rt(tiny_model_path: Path):
    """The tiny model behind the real mlx backend (loaded once, memoized per directory)."""
    from loopbus.models import load_runtime

    return load_runtime(str(tiny_model_path))


@pytest.fixture
def chat() -> list[dict[str, str]]:
    """A short system + user conversation."""
    return [
        {"role": "system", "content": "You are a careful agent. Answer with one tool call."},
        {"role": "user", "content": "Count the lines of README.md and report the number."},
    ]
