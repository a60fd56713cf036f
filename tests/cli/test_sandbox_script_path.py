"""`loopbus sandbox PATH` refuses a FIFO, a device or a folder with `Error: ...` before reading
it (opening a FIFO with no writer used to hang the command forever)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import clean_env, loopbus_argv


def _sandbox(path: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A subprocess with a timeout: the bug is a hang, which must fail the test, not stall it.
    return subprocess.run(
        loopbus_argv(None, "sandbox", path),
        cwd=cwd,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_fifo_is_refused_before_it_is_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "script.py")
    result = _sandbox("script.py", tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.startswith("Error: script.py is not a regular file"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_device_a_folder_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    cases = {
        os.devnull: "is not a regular file",
        "folder": "folder is a directory",
        "missing.py": "cannot read missing.py: No such file or directory",
    }
    for path, message in cases.items():
        result = _sandbox(path, tmp_path)
        assert result.returncode == 2, result
        assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
