"""Run pyright over the loopbus package (`make typecheck`, tests/test_typecheck.py).

The folders install under one namespace through setuptools' package-dir (agents/ is
`loopbus.agents`, ...), and pyright cannot follow the editable install's import hook. So the
`loopbus.*` imports are resolved through build/typecheck/loopbus/, a folder of symlinks to the
repository's folders that pyproject.toml's `[tool.pyright] extraPaths` names. The rest of the
configuration (standard mode, strict modules, excludes) is in `[tool.pyright]`.

Usage: python tests/typecheck.py [pyright arguments]; exit status is pyright's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK_ROOT = ROOT / "build" / "typecheck" / "loopbus"
# Import name under `loopbus` -> the repository folder it installs from (pyproject.toml).
PACKAGES = {"agents": "agents", "bus": "bus", "models": "models", "baml_client": "baml_client"}


def link_packages() -> Path:
    """Create (or repair) the symlink folder that maps `loopbus.X` to the repository's X/."""
    LINK_ROOT.mkdir(parents=True, exist_ok=True)
    for name, folder in PACKAGES.items():
        link = LINK_ROOT / name
        target = Path(os.path.relpath(ROOT / folder, LINK_ROOT))
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return LINK_ROOT


def pyright_command(args: list[str]) -> list[str]:
    """The pyright command line: this interpreter's packages are the third-party ones it sees."""
    return [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, *args]


def main(argv: list[str]) -> int:
    link_packages()
    return subprocess.call(pyright_command(argv), cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
