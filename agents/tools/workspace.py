"""Path safety for the read-only workspace a run is given.

Agents name files relative to the workspace root. Absolute paths, ``..`` components and
symlinks that resolve outside the root are refused with :class:`PathEscape`, whose message the
model sees as an error event.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from loopbus.agents.errors import AgentError


class WorkspaceError(AgentError):
    """A workspace path cannot be used (missing workspace, not found, wrong kind)."""


class PathEscape(WorkspaceError):
    """A path points outside the workspace root."""


def resolve(root: Path | None, relative: str, *, real_root: Path | None = None) -> Path:
    """The real path of ``relative`` inside ``root``, refusing anything that escapes it.

    ``real_root`` is ``root.resolve()`` when the caller already has it (a run resolves its
    workspace once).
    """
    if root is None:
        raise WorkspaceError("this run has no workspace; start it with --workspace DIR")
    text = relative.strip() or "."
    if "\x00" in text:
        raise PathEscape(f"path {relative!r} contains a NUL byte")
    pure = PurePosixPath(text.replace("\\", "/"))
    if pure.is_absolute() or text.startswith("~") or (len(text) > 1 and text[1] == ":"):
        raise PathEscape(
            f"absolute path {relative!r} refused: give a path relative to the workspace root"
        )
    if ".." in pure.parts:
        raise PathEscape(f"path {relative!r} refused: '..' may not leave the workspace root")
    base = real_root if real_root is not None else root.resolve()
    direct = _without_links(base, pure.parts)
    if direct is not None:  # no symlink below the (real) root: already the real path
        return direct
    target = (base / pure).resolve()
    if target != base and base not in target.parents:
        raise PathEscape(f"path {relative!r} refused: it is a symlink that leaves the workspace")
    return target


def _without_links(base: Path, parts: tuple[str, ...]) -> Path | None:
    """``base/parts`` when no existing component below ``base`` is a symlink, else None.

    With ``base`` real and no ``..`` in ``parts``, that is what ``Path.resolve()`` returns,
    for a few ``lstat`` calls instead of one per component of the whole path.
    """
    path = str(base)
    for part in parts:
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue  # missing: resolve() keeps the name as it is, and so do we
        if stat.S_ISLNK(mode):
            return None
    return Path(path)


def display(root: Path, path: Path) -> str:
    """``path`` relative to the (resolved) root, with ``/`` separators; ``.`` for the root."""
    rel = path.relative_to(root.resolve())
    return rel.as_posix() or "."
