"""Fixtures shared across the suite: real bus files and real (tiny or embedded) models."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def readme_user_blocks() -> dict[str, list[str]]:
    """The fenced blocks of the README's "Write your own agent" section, by language."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Write your own agent")
    section = text[start : text.index("\n## ", start + 1)]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


@pytest.fixture(scope="session")
def readme_user_project(
    readme_user_blocks: dict[str, list[str]],
) -> Callable[[Path], dict[str, list[str]]]:
    """Writes the README's user project (BAML source, my_agents/counter.py, notes.txt) into a
    folder, before its client is generated; returns the section's blocks by language."""

    def write(root: Path) -> dict[str, list[str]]:
        blocks = readme_user_blocks
        (root / "baml_src").mkdir(parents=True)
        (root / "baml_src" / "counter.baml").write_text(blocks["baml"][0])
        (root / "my_agents").mkdir()
        (root / "my_agents" / "__init__.py").write_text("")
        (root / "my_agents" / "counter.py").write_text(blocks["python"][0])
        (root / "notes.txt").write_text("one\ntwo\nthree\n")
        return blocks

    return write
