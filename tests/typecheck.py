"""Run pyright over the loopbus package (`make typecheck`, tests/test_typecheck.py).

The folders install under one namespace through setuptools' package-dir (agents/ is
`loopbus.agents`, ...), and pyright cannot follow the editable install's import hook. So the
`loopbus.*` imports resolve through build/typecheck/loopbus/, a folder of symlinks to the
repository's folders that `[tool.pyright] extraPaths` in pyproject.toml names. The checked files
are passed through those same symlinks: checked as agents/x.py, a module would be a second copy
of `loopbus.agents.x` whose classes pyright holds distinct from the imported ones. The output
names the repository's paths again. The rest of the configuration is in `[tool.pyright]`.

Usage: python tests/typecheck.py [pyright options] [files under agents/, bus/, models/];
the exit status is pyright's.
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
# What is checked: the package less the generated client and the demo's fixture project.
CHECKED = ("agents", "bus", "models")
SKIPPED = (ROOT / "agents" / "examples" / "fixture_project",)


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


def _linked(path: Path) -> Path:
    """`path` (a file in the repository) as seen through the symlink folder."""
    rel = path.resolve().relative_to(ROOT)
    return LINK_ROOT / rel


def package_files() -> list[Path]:
    """Every checked .py file, through the symlink folder."""
    files: list[Path] = []
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts or any(path.is_relative_to(s) for s in SKIPPED):
                continue
            files.append(_linked(path))
    return files


def pyright_command(args: list[str]) -> list[str]:
    """pyright on `args`' files (default: the package); this interpreter's packages are the
    third-party ones it sees."""
    options = [a for a in args if not a.endswith(".py")]
    files = [_linked(Path(a)) for a in args if a.endswith(".py")] or package_files()
    return [
        sys.executable,
        "-m",
        "pyright",
        "--pythonpath",
        sys.executable,
        # This project's configuration, never a pyrightconfig.json found in a parent folder.
        "--project",
        str(ROOT / "pyproject.toml"),
        *options,
        *(str(f) for f in files),
    ]


def unlinked(text: str) -> str:
    """pyright's output with the symlink paths turned back into the repository's."""
    for name, folder in PACKAGES.items():
        text = text.replace(f"{LINK_ROOT / name}{os.sep}", f"{ROOT / folder}{os.sep}")
    return text


def run(args: list[str]) -> tuple[int, str, str]:
    """Run the check; pyright's exit status, stdout and stderr, with repository paths."""
    link_packages()
    # Not node with the OpenBLAS that `make test` preloads (models/blas.py): its threads then
    # fail to start (pthread_create: Invalid argument).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run(
        pyright_command(args), cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    return done.returncode, unlinked(done.stdout), unlinked(done.stderr)


def main(argv: list[str]) -> int:
    code, out, err = run(argv)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
