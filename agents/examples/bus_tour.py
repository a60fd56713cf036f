"""`python -m loopbus.agents.examples.bus_tour`: a short tour of the bus CLI on a fresh temporary bus file.

Runs offline in a few seconds. Each command is printed before it runs, then run
in-process through the real `loopbus` click group (one follower runs as a real
subprocess to show the cross-process wake-up). It was the first `make demo`; the agent
chain (agents/examples/demo.py) replaced it there.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from loopbus.agents.cli import main as loopbus


def run(*args: str) -> None:
    """Print `$ loopbus ARGS` and run it in-process, like the shell would."""
    click.secho(f"\n$ loopbus {shlex.join(args)}", bold=True)
    try:
        loopbus.main(args=list(args), prog_name="loopbus", standalone_mode=False)
    except SystemExit as exc:  # `Error: ...` exits 2 (a refused query); the tour goes on
        click.secho(f"(exit status {exc.code})", dim=True)


def follow_demo(bus_file: Path) -> None:
    """Start `loopbus tail --follow` in another process and publish to it."""
    args = ["tail", "--follow", "--type", "alert.*"]
    click.secho(f"\n$ loopbus {shlex.join(args)} &   # another process", bold=True)
    env = {**os.environ, "LOOPBUS_BUS": str(bus_file), "PYTHONUNBUFFERED": "1"}
    follower = subprocess.Popen(
        [sys.executable, "-m", "loopbus.agents.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        time.sleep(1.0)  # let it start
        run("publish", "alert.disk", '{"free_gb": 3}', "--agent", "monitor")
        click.echo(f"[follower] {follower.stdout.readline().rstrip()}")
        time.sleep(0.3)  # now it is idle, waiting on the wake-up socket
        started = time.monotonic()
        run("publish", "alert.cpu", '{"load": 0.97}', "--agent", "monitor")
        line = follower.stdout.readline().rstrip()
        elapsed_ms = (time.monotonic() - started) * 1000
        click.echo(f"[follower] {line}")
        click.secho(
            f"(the follower printed it {elapsed_ms:.0f} ms after `publish` started; that"
            " includes opening the bus and a durable commit)",
            dim=True,
        )
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(timeout=5)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait()


def main() -> None:
    """Run the tour on a bus file in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="loopbus-demo-") as tmp:
        bus_file = Path(tmp) / "demo.db"
        os.environ["LOOPBUS_BUS"] = str(bus_file)
        click.secho(f"# A fresh bus: LOOPBUS_BUS={bus_file}", fg="cyan")

        run("publish", "file.found", '{"path": "README.md", "size": 1834}')
        run("publish", "file.found", '{"path": "bus/core.py", "size": 9120}', "--agent", "scanner")
        run(
            "publish",
            "finding",
            '{"path": "bus/core.py", "note": "long function"}',
            "--agent",
            "reviewer",
        )
        run("tail")
        run("tail", "--type", "file.*", "--json")

        click.secho("\n# A consumer acknowledges what it has handled (library call):", fg="cyan")
        from loopbus.bus import SyncBus

        with SyncBus(bus_file) as bus:
            bus.ack("indexer", 2)
        click.echo(">>> SyncBus(bus_file).ack('indexer', 2)")
        run("cursors")

        run(
            "sql",
            "SELECT event_type, count(*) AS n FROM outbox GROUP BY event_type ORDER BY n DESC",
        )
        run("sql", "SELECT id, agent, event_type FROM outbox WHERE id > 1", "--csv")
        run(
            "sql",
            "SELECT id, agent, json_extract(payload, ?) AS note FROM outbox WHERE event_type = ?",
            *("-p", "$.note", "-p", "finding", "--json"),
        )
        run("sql", "DELETE FROM outbox")  # refused: the sql command is read-only
        run("prune", "--dry-run")

        follow_demo(bus_file)
        click.secho("\n# Done: the bus file was a temporary one and is gone.", fg="cyan")


if __name__ == "__main__":
    main()
