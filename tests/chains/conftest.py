"""Fixtures for chain tests; the helpers live in chain_helpers.py next to this file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# --import-mode=importlib does not put test folders on sys.path; the helpers module needs it.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_runtime(tiny_model_path: Path) -> Any:
    """The tiny real model, loaded once for in-process workers."""
    from loopbus.models import load_runtime

    return load_runtime(str(tiny_model_path))
