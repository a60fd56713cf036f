"""Review fixes: cursors --drop, sql interrupt/timeout, JSON non-finite numbers, escaped
table cells, the VACUUM message, and no silently created directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from loopbus.bus import SyncBus

Invoke = Callable[..., Result]
Snapshot = Callable[[Path], dict[str, bytes]]
Spawn = Callable[..., subprocess.Popen[str]]
Run = Callable[..., subprocess.CompletedProcess[str]]

FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def assert_user_error(result: Result, fragment: str, code: int = 2) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr.startswith("Error: "), result.stderr
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- cursors --drop


def test_cursors_drop_unregisters_a_consumer_so_prune_can_pass_it(
    invoke: Invoke, populated_bus: Path
) -> None:
    assert invoke("prune", "--dry-run").stdout == "2 events would be deleted\n"  # indexer at 2
    result = invoke("cursors", "--drop", "indexer")
    assert result.exit_code == 0, result.output
    assert result.stdout == "dropped consumer indexer (its cursor was at 2)\n"
    consumers = [
        json.loads(line)["consumer"] for line in invoke("cursors", "--json").stdout.splitlines()
    ]
    assert consumers == ["mailer"]
    assert invoke("prune").stdout == "5 events deleted\n"


def test_cursors_drop_of_an_unknown_consumer_is_a_clear_error(
    invoke: Invoke, populated_bus: Path, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    result = invoke("cursors", "--drop", "mailer", "--drop", "nobody")
    assert_user_error(result, "no consumer named 'nobody' (registered: indexer, mailer)")
    assert result.stdout == ""
    assert snapshot(populated_bus) == before  # nothing dropped, not even mailer


def test_unregister_in_the_library(bus_file: Path) -> None:
    with SyncBus(bus_file) as bus:
        bus.publish("x", 1)
        bus.ack("old#1/2", 1)
        assert bus.unregister("old#1/2") == 1
        assert bus.unregister("old#1/2") is None
        assert bus.cursors() == []


# ----------------------------------------------------------------------------- sql


def test_sql_timeout_stops_a_runaway_query(invoke: Invoke, populated_bus: Path) -> None:
    started = time.monotonic()
    result = invoke("sql", FOREVER, "--timeout", "0.3")
    assert_user_error(result, "Error: query timed out after 0.3 s", code=1)  # ran, did not finish
    assert time.monotonic() - started < 10
    assert invoke("sql", "SELECT 1 AS one", "--timeout", "30").exit_code == 0
    assert invoke("sql", "SELECT 1", "--timeout", "0").exit_code == 2  # must be positive


def _wait_until_open(proc: subprocess.Popen[str], path: Path, timeout: float = 30) -> None:
    """Until the process has `path` open (the query runs), or a short wait where /proc lacks."""
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    if not fd_dir.is_dir():
        time.sleep(3)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd) == str(path.resolve()):
                    time.sleep(0.2)  # into the query's C loop
                    return
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("the query never started")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sql_stops_at_ctrl_c(spawn_cli: Spawn, populated_bus: Path) -> None:
    proc = spawn_cli("sql", FOREVER)
    _wait_until_open(proc, populated_bus)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=20)
    assert time.monotonic() - started < 10
    assert (proc.returncode, stdout) == (130, ""), stderr
    assert stderr == "Error: query interrupted\n"


def test_query_interrupt_flag_and_timeout_in_the_library(populated_bus: Path) -> None:
    import threading

    from loopbus.bus import query
    from loopbus.bus.errors import QueryInterrupted, QueryTimeout

    flag = threading.Event()
    threading.Timer(0.2, flag.set).start()
    with pytest.raises(QueryInterrupted, match="query interrupted"):
        query(populated_bus, FOREVER, interrupt=flag)
    with pytest.raises(QueryTimeout, match="after 0.2 s"):
        query(populated_bus, FOREVER, timeout_s=0.2)
    assert query(populated_bus, "SELECT 2", timeout_s=5, interrupt=flag).rows == [(2,)]


def test_sql_json_writes_infinities_as_strings(invoke: Invoke, populated_bus: Path) -> None:
    result = invoke("sql", "SELECT 1e999 AS up, -1e999 AS down, 0.5 AS half", "--json")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}")) == {
        "up": "Infinity",
        "down": "-Infinity",
        "half": 0.5,
    }


def test_sql_table_escapes_control_characters_and_markup(
    invoke: Invoke, populated_bus: Path
) -> None:
    result = invoke(
        "sql",
        "SELECT char(27) || '[31mred' AS esc, 'a' || char(10) || 'b' AS nl, '[/]' AS \"[b]x\"",
    )
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["esc", "nl", "[b]x"]
    assert lines[2].split() == ["\\x1b[31mred", "a\\nb", "[/]"]
    assert len(lines) == 3  # the newline did not split the row


def test_tail_escapes_control_characters_in_the_agent(invoke: Invoke, bus_file: Path) -> None:
    assert invoke("publish", "x", "{}", "--agent", "evil\x1b[2J").exit_code == 0
    out = invoke("tail").stdout
    assert "\x1b" not in out and "evil\\x1b[2J" in out


def test_sql_vacuum_is_refused_by_name(invoke: Invoke, populated_bus: Path) -> None:
    for statement in ("VACUUM", "/* compact */ vacuum"):
        result = invoke("sql", statement)
        assert_user_error(result, "refused: VACUUM would change the bus")


# ----------------------------------------------------------------------------- directories


def test_publish_never_creates_directories(invoke: Invoke, tmp_path: Path, run_cli: Run) -> None:
    missing = tmp_path / "missing" / "dir"
    result = invoke("publish", "x", "{}", bus=missing / "x.db")
    assert_user_error(result, f"Error: directory {missing} does not exist")
    assert not (tmp_path / "missing").exists()
    # The bus file itself is still created in an existing directory.
    assert invoke("publish", "x", "{}", bus=tmp_path / "new.db").stdout == "1\n"
    proc = run_cli("publish", "x", "{}", bus=missing / "x.db")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith(f"Error: directory {missing} does not exist")
    assert not (tmp_path / "missing").exists()
