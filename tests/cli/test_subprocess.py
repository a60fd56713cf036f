"""`loopbus` as real processes: end-to-end, clean errors, and `tail --follow` across processes."""

from __future__ import annotations

import json
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from loopbus.bus import SyncBus

Run = Callable[..., subprocess.CompletedProcess[str]]
Snapshot = Callable[[Path], dict[str, bytes]]
Spawn = Callable[..., subprocess.Popen[str]]


def test_publish_tail_sql_end_to_end(run_cli: Run, bus_file: Path) -> None:
    first = run_cli("publish", "file.found", '{"path": "README.md"}')
    assert (first.returncode, first.stdout, first.stderr) == (0, "1\n", "")
    second = run_cli("publish", "finding", "-", "--agent", "reviewer", input='{"note": "ok"}')
    assert (second.returncode, second.stdout) == (0, "2\n")

    tail = run_cli("tail", "--json")
    assert tail.returncode == 0, tail.stderr
    records = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(r["id"], r["agent"], r["event_type"], r["payload"]) for r in records] == [
        (1, "cli", "file.found", {"path": "README.md"}),
        (2, "reviewer", "finding", {"note": "ok"}),
    ]

    csv_out = run_cli("sql", "SELECT id, event_type FROM outbox ORDER BY id", "--csv")
    assert csv_out.stdout == "id,event_type\n1,file.found\n2,finding\n"
    table = run_cli("sql", "SELECT count(*) AS n FROM outbox")
    assert table.returncode == 0 and "n" in table.stdout.split() and "2" in table.stdout.split()


def test_bus_path_from_environment_then_current_directory(run_cli: Run, tmp_path: Path) -> None:
    env_bus = tmp_path / "from-env.db"
    assert (
        run_cli("publish", "a", "{}", bus=None, env={"LOOPBUS_BUS": str(env_bus)}).stdout == "1\n"
    )
    assert env_bus.exists() and not (tmp_path / "loopbus.db").exists()
    assert run_cli("publish", "b", "{}", bus=None).stdout == "1\n"
    assert (tmp_path / "loopbus.db").exists()
    # --bus wins over the environment.
    explicit = tmp_path / "explicit.db"
    assert (
        run_cli("publish", "c", "{}", bus=explicit, env={"LOOPBUS_BUS": str(env_bus)}).stdout
        == "1\n"
    )
    assert (
        run_cli("tail", "--json", bus=None, env={"LOOPBUS_BUS": str(env_bus)}).stdout.count("\n")
        == 1
    )


@pytest.mark.parametrize(
    ("args", "stdin", "fragment"),
    [
        (["publish", "file.found", "{oops"], None, "payload is not valid JSON"),
        (["publish", "Bad.Type", "{}"], None, "invalid event type"),
        (["publish", "blob", "-"], json.dumps(["z" * (1 << 20)]), "above the bus limit"),
        (["sql", "DELETE FROM outbox"], None, ""),
        (["sql", "PRAGMA user_version = 3"], None, ""),
        (["prune", "--max-age", "forever"], None, "--max-age"),
        (["tail", "--bogus"], None, "No such option"),
    ],
)
def test_user_errors_are_one_line_not_tracebacks(
    run_cli: Run,
    bus_file: Path,
    snapshot: Snapshot,
    args: list[str],
    stdin: str | None,
    fragment: str,
) -> None:
    with SyncBus(bus_file) as bus:
        bus.publish("seed", {})
    before = snapshot(bus_file)
    result = run_cli(*args, input=stdin)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Error: " in result.stderr and fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(bus_file) == before


@pytest.mark.parametrize(
    "args", [["tail"], ["tail", "-f"], ["sql", "SELECT 1"], ["cursors"], ["prune"]]
)
def test_read_commands_on_a_missing_file(run_cli: Run, bus_file: Path, args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert not bus_file.exists()


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("loopbus")
    assert script.exists(), "run `make install`: the loopbus console script is missing"
    result = subprocess.run(
        [str(script), "tail", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "loopbus tail --follow" in result.stdout


class LineReader:
    """Collects a subprocess's stdout lines with the time each arrived."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put((time.monotonic(), line))

    def next(self, timeout: float) -> tuple[float, dict]:
        arrived, line = self.lines.get(timeout=timeout)
        return arrived, json.loads(line)


def test_follow_prints_events_from_another_process_promptly(
    bus_file: Path, run_cli: Run, spawn_cli: Spawn
) -> None:
    with SyncBus(bus_file) as bus:
        bus.publish("seed", {"n": 0})
        follower = spawn_cli("tail", "--follow", "--json", "--type", "tick")
        try:
            reader = LineReader(follower)
            # Warm-up: the first event proves the follower is running (its start-up is slow).
            bus.publish("tick", {"n": 1})
            _, first = reader.next(timeout=30)
            assert first["payload"] == {"n": 1}
            latencies = []
            for n in range(2, 8):
                bus.publish("tock", {"n": n})  # filtered out: must not be printed
                time.sleep(0.3)  # let the follower go idle between events
                sent = time.monotonic()
                event_id = bus.publish("tick", {"n": n})
                arrived, record = reader.next(timeout=5)
                latencies.append(arrived - sent)
                assert (record["id"], record["event_type"], record["payload"]) == (
                    event_id,
                    "tick",
                    {"n": n},
                )
            # The safety poll is 1 s: only the cross-process wake-up can make every event this fast.
            print("follow latencies (s):", [round(x, 4) for x in latencies])
            assert max(latencies) < 0.9, latencies
            assert statistics.median(latencies) < 0.3, latencies
        finally:
            follower.send_signal(signal.SIGINT)
            try:
                _, stderr = follower.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                follower.kill()
                raise
    assert follower.returncode == 130, stderr  # Ctrl-C, like tail -f
    assert stderr == ""
    # Following registers no consumer cursor (it must never hold back prune)...
    assert run_cli("cursors", "--json").stdout == ""
    # ...and a clean stop leaves no wake-up socket behind.
    wake_dir = bus_file.parent / (bus_file.name + ".wake")
    assert not wake_dir.exists() or not any(wake_dir.iterdir())


def test_follow_stops_quietly_on_sigint_while_idle(bus_file: Path, spawn_cli: Spawn) -> None:
    with SyncBus(bus_file) as bus:
        bus.publish("seed", {"n": 0})
    follower = spawn_cli("tail", "-f")
    assert follower.stdout is not None
    first = follower.stdout.readline()  # the existing event: the follower is now up
    assert first.split()[0] == "1" and "seed" in first
    time.sleep(0.3)
    follower.send_signal(signal.SIGINT)
    out, err = follower.communicate(timeout=10)
    assert (follower.returncode, out, err) == (130, "", "")
