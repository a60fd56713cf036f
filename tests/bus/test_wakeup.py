"""Cross-process wake-up: the doorbell, its directory and dead-socket clean-up."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopbus.bus import Bus
from loopbus.bus.sqlite.wakeup import Doorbell, wake_dir_for


def test_wake_dir_is_next_to_the_bus_or_short(tmp_path: Path) -> None:
    assert wake_dir_for(tmp_path / "bus.db") == Path(
        os.path.realpath(tmp_path / "bus.db") + ".wake"
    )
    deep = tmp_path / ("d" * 80) / "bus.db"
    short = wake_dir_for(deep)
    assert str(short).startswith("/tmp/loopbus-wake-")
    assert short == wake_dir_for(deep)  # every process derives the same one


def test_doorbell_rings_live_sockets_and_removes_dead_ones(tmp_path: Path) -> None:
    wake = tmp_path / "bus.db.wake"
    wake.mkdir()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(str(wake / "live.sock"))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(wake / "dead.sock"))
    dead.close()  # the file stays, nobody listens: like a SIGKILLed subscriber
    bell = Doorbell(wake)
    assert bell.ring() == 1
    assert live.recv(16) == b"\x01"
    assert not (wake / "dead.sock").exists()
    live.close()
    bell.close()


def _wait_for_socket(wake: Path, proc: subprocess.Popen[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wake.is_dir() and any(p.suffix == ".sock" for p in wake.iterdir()):
            return
        assert proc.poll() is None, "follower exited early"
        time.sleep(0.02)
    raise AssertionError("the follower never bound its wake-up socket")


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


async def test_follower_in_another_process_wakes_before_the_safety_poll(
    bus_path: Path, bh: SimpleNamespace
) -> None:
    async with Bus.connect(bus_path) as bus:
        await bus.publish("boot", 0)  # creates the file before the follower opens it
        # Safety poll 5 s: only the doorbell can deliver within 1 s.
        follower = bh.spawn("proc_follower.py", bus_path, 5.0, 3, stdout=subprocess.PIPE)
        try:
            _wait_for_socket(wake_dir_for(bus_path), follower)
            for round_ in range(3):
                await __import__("asyncio").sleep(0.3)  # the follower is idle, waiting
                started = time.monotonic()
                event_id = await bus.publish("wake.ping", round_)
                line = _readline(follower, timeout=4)
                elapsed = time.monotonic() - started
                assert line == str(event_id), f"no delivery within 4 s (got {line!r})"
                assert elapsed < 1.0, f"delivery took {elapsed:.3f} s"
            assert follower.wait(timeout=10) == 0
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    # The follower removed its socket on close.
    assert not any(wake_dir_for(bus_path).glob("*.sock"))


@pytest.mark.parametrize("long_path", [True])
async def test_wakeup_works_with_a_long_bus_path(tmp_path: Path, long_path: bool) -> None:
    path = tmp_path / ("x" * 90) / "bus.db"
    path.parent.mkdir()
    async with Bus.connect(path, safety_poll_s=30) as a, Bus.connect(path) as b:
        iterator = a.subscribe("long")
        import asyncio

        task = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await b.publish("long.path", 1)
        event = await asyncio.wait_for(task, 5)
        assert event.event_type == "long.path"
        assert time.monotonic() - started < 5
        assert a._listener.wakeups >= 1  # woken by the datagram, not only locally
    wake_dir_for(path).rmdir()  # the short fallback directory lives in /tmp: tidy up


async def test_unusable_wake_dir_falls_back_to_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bus.db"
    wake_dir_for(path).write_text("a file where the wake directory should be")
    async with Bus.connect(path, safety_poll_s=0.05) as a, Bus.connect(path) as b:
        import asyncio

        task = asyncio.ensure_future(a.subscribe("poller").__anext__())
        await asyncio.sleep(0.1)
        await b.publish("polled", 1)
        event = await asyncio.wait_for(task, 5)
        assert event.event_type == "polled"
    assert any("polling instead" in r.getMessage() for r in caplog.records)


async def test_the_safety_poll_reads_the_bus_only_after_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle subscriber's safety poll checks SQLite's data_version on the loop thread and
    fetches only when another connection committed: here a raw sqlite3 insert, no doorbell."""
    import asyncio
    import sqlite3

    from loopbus.bus.sqlite import sqlops

    fetches = 0
    fetch_after = sqlops.fetch_after

    def counting(*args: object) -> object:
        nonlocal fetches
        fetches += 1
        return fetch_after(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlops, "fetch_after", counting)
    path = tmp_path / "bus.db"
    async with Bus.connect(path, safety_poll_s=0.02) as bus:
        task = asyncio.ensure_future(bus.subscribe("idle").__anext__())
        await asyncio.sleep(0.4)  # ~20 safety polls
        assert not task.done()
        assert fetches <= 2  # the first fetch, not one per poll
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            "INSERT INTO outbox (agent, event_type, payload) VALUES ('raw', 'raw.insert', '1')"
        )
        conn.close()
        event = await asyncio.wait_for(task, 5)
        assert event.event_type == "raw.insert"
        assert fetches >= 2
