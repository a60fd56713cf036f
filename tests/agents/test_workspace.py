"""Path safety: nothing outside the workspace root is reachable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loopbus.agents.tools.core import ToolContext, ToolError, list_dir, read_file
from loopbus.agents.tools.workspace import PathEscape, WorkspaceError, resolve


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "outside.txt").write_text("secret")
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "a.txt").write_text("hello")
    (ws / "sub" / "b.txt").write_text("inner")
    os.symlink(tmp_path / "outside.txt", ws / "leak.txt")
    os.symlink(tmp_path, ws / "up")
    os.symlink(ws / "a.txt", ws / "alias.txt")  # stays inside: allowed
    return ws


@pytest.mark.parametrize(
    "good,expected",
    [
        (".", "."),
        ("", "."),
        ("a.txt", "a.txt"),
        ("sub/b.txt", "sub/b.txt"),
        ("./sub/../a.txt", None),
        ("alias.txt", "a.txt"),
    ],
)
def test_inside_paths_resolve(root: Path, good: str, expected: str | None) -> None:
    if expected is None:  # '..' is refused even when it would stay inside
        with pytest.raises(PathEscape):
            resolve(root, good)
        return
    assert resolve(root, good) == (root / expected).resolve()


@pytest.mark.parametrize(
    "bad",
    [
        "/etc/passwd",
        "../outside.txt",
        "sub/../../outside.txt",
        "leak.txt",
        "up/outside.txt",
        "~/x",
        "C:\\Windows",
        "..\\outside.txt",
        "a\x00b",
    ],
)
def test_escapes_are_refused(root: Path, bad: str) -> None:
    with pytest.raises(PathEscape) as info:
        resolve(root, bad)
    assert "refused" in str(info.value) or "NUL" in str(info.value)


def test_no_workspace_is_an_error() -> None:
    with pytest.raises(WorkspaceError, match="--workspace"):
        resolve(None, "a.txt")


def test_builtin_handlers(root: Path) -> None:
    from loopbus.baml_client import types

    ctx = ToolContext("r", "assistant", root)
    listing = list_dir(types.ListDir(action="list_dir", path="."), ctx)
    assert listing.splitlines() == [
        "a.txt",
        "alias.txt",
        "leak.txt",
        "sub/",
        "up/",
        "(3 files, 2 folders)",
    ]
    assert read_file(types.ReadFile(action="read_file", path="sub/b.txt"), ctx) == "inner"
    with pytest.raises(PathEscape):
        read_file(types.ReadFile(action="read_file", path="leak.txt"), ctx)
    with pytest.raises(ToolError, match="not a file"):
        read_file(types.ReadFile(action="read_file", path="sub"), ctx)
    with pytest.raises(ToolError, match="not a directory"):
        list_dir(types.ListDir(action="list_dir", path="a.txt"), ctx)


def test_read_file_truncates_large_files(root: Path) -> None:
    (root / "big.txt").write_text("x" * 1000)
    ctx = ToolContext("r", "assistant", root)
    text = ctx.read_text("big.txt", limit=100)
    assert text.startswith("x" * 100) and "rest not read" in text
