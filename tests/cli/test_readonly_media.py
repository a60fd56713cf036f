"""A bus on read-only media (issue 14): read commands work, writes say the bus is read-only.

The tests run as root here, and root ignores permission bits (chmod 0444/0555, even chattr +i
for some calls), so the read-only situation is a real one nobody can bypass: the bus's folder
bind-mounted read-only over itself in a private mount namespace (``unshare -rm``; with user
namespaces this needs no privileges). Where that is not possible the tests are skipped.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bus import SyncBus

ROOT = Path(__file__).resolve().parents[2]


def run_read_only(directory: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run the shell ``script`` with ``directory`` mounted read-only, in its own namespace."""
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"{mount} && {script}", str(directory)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def read_only_mounts(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip unless a read-only bind mount in a private namespace works here."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot make a read-only mount")
    probe = tmp_path_factory.mktemp("probe")
    result = run_read_only(probe, 'touch "$0/x" 2>/dev/null && echo writable || echo read-only')
    if result.returncode != 0 or result.stdout.strip() != "read-only":
        pytest.skip(f"no read-only bind mount here: {result.stderr.strip() or result.stdout}")


def loopbus(bus: Path, *args: str) -> str:
    """A shell line running `loopbus --bus BUS ARGS`, then a marker with its exit status."""
    argv = [sys.executable, "-m", "agents.cli", "--bus", str(bus), *args]
    return f'{shlex.join(argv)} 2>&1; echo "== $?"'


def sections(output: str) -> list[tuple[str, int]]:
    """The output of each `loopbus` line and its exit status."""
    parts: list[tuple[str, int]] = []
    text = ""
    for line in output.splitlines(keepends=True):
        if line.startswith("== "):
            parts.append((text, int(line[3:])))
            text = ""
        else:
            text += line
    return parts


def test_read_commands_work_and_publish_says_read_only(
    read_only_mounts: None, tmp_path: Path
) -> None:
    bus_file = tmp_path / "bus.db"
    with SyncBus(bus_file) as bus:
        bus.publish("file.found", {"path": "a.py"}, agent="scanner")
        bus.ack("indexer", 1)
    # A cleanly closed bus leaves no -wal/-shm: SQLite's mode=ro alone cannot open it here.
    assert not Path(f"{bus_file}-wal").exists()
    before = bus_file.read_bytes()
    chain = tmp_path / "chain.toml"
    chain.write_text(
        '[chain]\nworkspace = "."\n\n[agents.a]\nkind = "answer"\nsubscribe = ["x.*"]\n'
        'task = "t"\n',
        encoding="utf-8",
    )
    script = " ; ".join(
        [
            loopbus(bus_file, "tail"),
            loopbus(bus_file, "tail", "--json"),
            loopbus(bus_file, "sql", "SELECT count(*) AS n FROM outbox", "--json"),
            loopbus(bus_file, "cursors", "--json"),
            loopbus(bus_file, "publish", "x.y", "{}"),
            loopbus(tmp_path / "new.db", "publish", "x.y", "{}"),
            # Commands that would write later fail at once, before a model loads or a
            # chain's agents start (and crash-loop).
            loopbus(bus_file, "run", "answer", "hi", "--model", "does-not-matter"),
            loopbus(bus_file, "up", str(chain), "--no-live", "--until-idle"),
        ]
    )
    result = run_read_only(tmp_path, script)
    assert result.returncode == 0, result.stderr
    (tail, rc1), (tail_json, rc2), (sql, rc3), (cursors, rc4), (publish, rc5), (create, rc6) = (
        sections(result.stdout)[:6]
    )
    for output, rc in sections(result.stdout)[6:]:
        assert rc != 0 and output.startswith("Error: the bus "), output
        assert "is read-only" in output and "Traceback" not in output
    assert rc1 == rc2 == rc3 == rc4 == 0, result.stdout
    assert "file.found" in tail and "a.py" in tail
    assert '"path": "a.py"' in tail_json
    assert sql.strip() == '{"n": 1}'
    assert '"consumer": "indexer"' in cursors
    assert rc5 != 0 and publish.startswith("Error: the bus "), publish
    assert "is read-only" in publish and "Traceback" not in publish
    assert rc6 != 0 and create.startswith("Error: cannot create the bus "), create
    assert "read-only" in create
    assert bus_file.read_bytes() == before
    assert not (tmp_path / "new.db").exists()


def test_the_library_opens_it_read_only_and_refuses_every_write(
    read_only_mounts: None, tmp_path: Path
) -> None:
    bus_file = tmp_path / "bus.db"
    with SyncBus(bus_file) as bus:
        bus.publish("file.found", {"path": "a.py"})
        bus.publish("file.found", {"path": "b.py"})
    check = f"""
import sys
from pathlib import Path
from bus import SyncBus, query
from bus.errors import BusReadOnly
from bus.readonly import is_read_only, read_only_uri

path = Path({str(bus_file)!r})
assert is_read_only(path)
assert read_only_uri(path).endswith("?immutable=1"), read_only_uri(path)
assert query(path, "SELECT count(*) FROM outbox").rows == [(2,)]
with SyncBus(path, create=False) as bus:
    assert bus.read_only and bus.bus.read_only
    assert [e.payload["path"] for e in bus.events()] == ["a.py", "b.py"]
    assert [e.id for e in bus.follow(since_id=1, timeout=0.1)] == [2]
    writes = {{
        "publish": lambda: bus.publish("x.y", {{}}),
        "publish_many": lambda: bus.publish_many([{{"event_type": "x.y", "payload": {{}}}}]),
        "ack": lambda: bus.ack("c", 1),
        "unregister": lambda: bus.unregister("c"),
        "subscribe": lambda: next(bus.subscribe("c", timeout=0.1)),
        "transaction": lambda: bus.transaction().__enter__(),
        "prune": lambda: bus.prune(),
        "check_writable": lambda: bus.check_writable(),
    }}
    for name, write in writes.items():
        try:
            write()
        except BusReadOnly as exc:
            assert "is read-only" in str(exc), exc
        else:
            sys.exit(f"{{name}} wrote to a read-only bus")
print("ok")
"""
    result = run_read_only(tmp_path, f"{shlex.quote(sys.executable)} -c {shlex.quote(check)}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok", result.stdout + result.stderr


def test_a_live_bus_seen_read_only_keeps_its_write_ahead_log(
    read_only_mounts: None, tmp_path: Path
) -> None:
    # Another process keeps the bus open through a writable path: its -wal holds commits that
    # an immutable open would not see, so the read-only view must read them through mode=ro.
    bus_file = tmp_path / "bus.db"
    with SyncBus(bus_file) as bus:
        for n in range(3):
            bus.publish("tick", {"n": n})
        assert Path(f"{bus_file}-wal").stat().st_size > 0
        result = run_read_only(tmp_path, loopbus(bus_file, "tail", "--json"))
    assert result.returncode == 0, result.stderr
    ((out, rc),) = sections(result.stdout)
    assert rc == 0, out
    assert [line.count('"tick"') for line in out.splitlines()] == [1, 1, 1], out
