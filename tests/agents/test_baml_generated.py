"""`make generate` check: the committed baml_client/ must match what baml_src/ generates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_baml_client_is_up_to_date(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "baml_src", tmp_path / "baml_src")
    cli = Path(sys.executable).with_name("baml-cli")
    subprocess.run(
        [str(cli), "generate", "--from", str(tmp_path / "baml_src")],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh, committed = _files(tmp_path / "baml_client"), _files(ROOT / "baml_client")
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"baml_client/ is out of date with baml_src/ ({stale}); run `make generate`"


def test_generator_is_pinned_to_installed_baml_py() -> None:
    from importlib.metadata import version

    text = (ROOT / "baml_src" / "generators.baml").read_text()
    assert f'version "{version("baml-py")}"' in text
