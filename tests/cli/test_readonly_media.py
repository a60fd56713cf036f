"""A bus on read-only media (issue 14): read commands work, writes say the bus is read-only.

The tests run as root here, and root ignores permission bits, so each read-only situation is
one its user cannot bypass: the bus's folder bind-mounted read-only over itself in a private
mount namespace (``unshare -rm``: EROFS, which SQLite reports as CANTOPEN), and permission bits
(0555 folder, 0444 file) for a user without root's override (root enters a user namespace with
``unshare -U``: its own uid, no capabilities over its files), which SQLite reports as
READONLY_DIRECTORY. Where neither is possible the tests are skipped.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loopbus.bus import SyncBus

ROOT = Path(__file__).resolve().parents[2]


RunReadOnly = Callable[[Path, str], subprocess.CompletedProcess[str]]


def _sh(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        timeout=120,
        check=False,
    )


def run_in_read_only_mount(directory: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run the shell ``script`` with ``directory`` mounted read-only, in its own namespace."""
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"'
    return _sh(["unshare", "-rm", "sh", "-c", f"{mount} && {script}", str(directory)])


def run_with_write_permission_removed(
    directory: Path, script: str
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``directory`` at 0555 and its files at 0444; root runs it in a
    user namespace (``unshare -U``), where it keeps its uid but no power over its files."""
    files = [p for p in directory.iterdir() if p.is_file()]
    for path in files:
        path.chmod(0o444)
    directory.chmod(0o555)
    prefix = ["unshare", "-U"] if os.geteuid() == 0 else []
    try:
        return _sh([*prefix, "sh", "-c", script, str(directory)])
    finally:
        directory.chmod(0o755)
        for path in files:
            path.chmod(0o644)


_CHECK = 'touch "$0/x" 2>/dev/null && echo writable || echo read-only'


def _works(runner: RunReadOnly, directory: Path) -> bool:
    if os.geteuid() == 0 or runner is run_in_read_only_mount:
        if shutil.which("unshare") is None:
            return False
    result = runner(directory, _CHECK)
    return result.returncode == 0 and result.stdout.strip() == "read-only"


@pytest.fixture(scope="module")
def run_read_only(tmp_path_factory: pytest.TempPathFactory) -> RunReadOnly:
    """How to run a script with a folder read-only in a way its user cannot bypass: a
    read-only bind mount in a private namespace, else permission bits; else skip."""
    for runner in (run_in_read_only_mount, run_with_write_permission_removed):
        if _works(runner, tmp_path_factory.mktemp("probe")):
            return runner
    pytest.skip("no read-only situation that this user cannot bypass")


@pytest.fixture(
    scope="module",
    params=[run_in_read_only_mount, run_with_write_permission_removed],
    ids=["read-only-mount", "no-write-permission"],
)
def each_read_only(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> RunReadOnly:
    """Each kind of read-only situation (SQLite reports them with different errors)."""
    if not _works(request.param, tmp_path_factory.mktemp("probe")):
        pytest.skip(f"{request.param.__name__} is not possible here")
    return request.param  # type: ignore[no-any-return]


def loopbus(bus: Path, *args: str) -> str:
    """A shell line running `loopbus --bus BUS ARGS`, then a marker with its exit status."""
    argv = [sys.executable, "-m", "loopbus.agents.cli", "--bus", str(bus), *args]
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
    run_read_only: RunReadOnly, tmp_path: Path
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
    each_read_only: RunReadOnly, tmp_path: Path
) -> None:
    bus_file = tmp_path / "bus.db"
    with SyncBus(bus_file) as bus:
        bus.publish("file.found", {"path": "a.py"})
        bus.publish("file.found", {"path": "b.py"})
    check = f"""
import sys
from pathlib import Path
from loopbus.bus import SyncBus, query
from loopbus.bus.errors import BusReadOnly
from loopbus.bus.readonly import is_read_only, read_only_uri

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
    result = each_read_only(tmp_path, f"{shlex.quote(sys.executable)} -c {shlex.quote(check)}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok", result.stdout + result.stderr


def test_a_live_bus_seen_read_only_keeps_its_write_ahead_log(
    run_read_only: RunReadOnly, tmp_path: Path
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
