"""`--bus URL` / `$LOOPBUS_BUS` on every backend: the bus commands as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _loopbus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopbus.agents.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_bus_commands_take_the_url(target: str) -> None:
    url = target if "://" in target else f"sqlite://{target}"
    published = _loopbus("--bus", url, "publish", "file.found", '{"path": "a.py"}')
    assert published.returncode == 0, published.stderr
    assert published.stdout.strip() == "1"
    env = {"LOOPBUS_BUS": url}
    tail = _loopbus("tail", "--json", env=env)
    assert tail.returncode == 0 and '"path":"a.py"' in tail.stdout.replace(" ", "")
    sql = _loopbus("sql", "SELECT count(*) AS n FROM outbox WHERE id = ?", "-p", "1", env=env)
    assert sql.returncode == 0 and sql.stdout.split()[-1] == "1", sql.stdout + sql.stderr
    refused = _loopbus("sql", "DELETE FROM outbox", env=env)
    assert refused.returncode == 2 and refused.stderr.startswith("Error: refused")
