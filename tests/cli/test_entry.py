"""The console entry point: only generating commands re-execute with OpenBLAS, and only there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loopbus.agents.cli import GENERATING, _command_name


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "assistant", "hi"], "run"),
        (["--bus", "x.db", "agent", "reviewer"], "agent"),
        (["--bus=x.db", "tail"], "tail"),
        (["--bus", "run", "sql", "SELECT 1"], "sql"),  # a bus file named "run" is no command
        (["--help"], None),
        ([], None),
    ],
)
def test_command_name_skips_global_options(argv: list[str], expected: str | None) -> None:
    assert _command_name(argv) == expected


def test_only_generating_commands_reexec() -> None:
    assert GENERATING == {"run", "agent", "distill"}  # distill trains in process


def test_bus_command_does_not_touch_blas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A bus command must neither import loopbus.models.blas nor restart itself.
    code = (
        "import sys; sys.argv = ['loopbus', '--bus', sys.argv[1], 'cursors']\n"
        "from loopbus.agents.cli import entry\n"
        "try:\n    entry()\nexcept SystemExit:\n    pass\n"
        "print('loopbus.models.blas' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "LOOPBUS_BLAS_REEXEC"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "none.db")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
