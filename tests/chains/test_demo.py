"""`make demo` end to end: the review chain with the embedded SmolLM2, offline, real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chain_helpers import REPO


@pytest.mark.slow
def test_demo_reviews_a_folder_with_smollm2(tmp_path: Path, smollm2_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "app.py").write_text("def main() -> None:\n    # TODO: parse arguments\n    pass\n")
    (folder / "notes.md").write_text("# Notes\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loopbus.agents.examples.demo",
            "--folder",
            str(folder),
            "--out",
            str(out),
            "--no-live",
            "--timeout",
            "400",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=450,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "2/2 files reviewed (complete), 2 findings" in report
    assert "TODO left in app.py:2: parse arguments" in report
    assert "no tests for module app (app.py)" in report
    assert f"report: {out / 'report.md'}" in proc.stdout
    assert f'loopbus --bus {out / "demo.db"} sql "SELECT' in proc.stdout
