"""`make typecheck` in the suite: pyright finds no error in the package (tests/typecheck.py).

pyright comes with the test extra (pyproject.toml), so CI runs this; without it the test is
skipped, except on CI, where a missing pyright fails it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "typecheck.py"

pytestmark = pytest.mark.slow


def _pyright_or_skip() -> None:
    if importlib.util.find_spec("pyright") is not None:
        return
    message = "pyright is not installed (pip install -e '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(message + ": CI must run the type check")
    pytest.skip(message)


def _package_files() -> int:
    # tests/typecheck.py's own list (loaded as a file: tests/ is not a package).
    spec = importlib.util.spec_from_file_location("loopbus_typecheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return len(module.package_files())


def test_pyright_reports_no_error_in_the_package() -> None:
    _pyright_or_skip()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--outputjson"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        pytest.fail(
            f"pyright gave no JSON report (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    lines = [
        f"{os.path.relpath(d['file'], ROOT)}:{d['range']['start']['line'] + 1}:"
        f"{d['range']['start']['character'] + 1} - {d['message']} ({d.get('rule', '')})"
        for d in errors
    ]
    if lines:
        pytest.fail(f"pyright: {len(lines)} errors\n" + "\n".join(lines), pytrace=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # The whole package was checked (through the symlink folder), not a part of it.
    assert report["summary"]["filesAnalyzed"] >= _package_files() > 100
