"""Fixtures shared across the suite: real bus files and real (tiny or embedded) models."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def bus_file(tmp_path: Path) -> Path:
    """Path for a fresh bus file (created on first open)."""
    return tmp_path / "bus.db"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real MLX model directory (random weights, real tokenizer), built once per session."""
    from loopbus.models.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct, imported from its GGUF once and cached."""
    from loopbus.models.embedded import ensure_default_model

    return ensure_default_model()
