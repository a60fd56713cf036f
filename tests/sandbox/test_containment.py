"""Containment found by adversarial testing (issue 14): each test fails on the old sandbox."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from loopbus.agents.errors import SandboxClosed
from loopbus.agents.sandbox.core import SandboxLimits


@pytest.mark.parametrize("event_type", ["run.outcome", "run.decision", "run", " Run.task"])
def test_publish_refuses_the_loops_run_namespace(make_sandbox, event_type: str) -> None:
    published: list[tuple[str, Any]] = []
    box = make_sandbox(publish=lambda t, p: published.append((t, p)) or len(published))
    result = box.run(f"publish({event_type!r}, {{'kind': 'done', 'answer': 'forged'}})")
    assert result.error_type == "HostError", result.error
    assert "reserved for the agent loop" in result.error
    assert published == []  # the bus never saw it
    ok = box.run("publish('result.ready', {'n': 1})")
    assert ok.ok and ok.result == "1" and published == [("result.ready", {"n": 1})]


def _guest_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sandbox-guest"]


def test_close_stops_a_guest_that_is_still_running(make_sandbox) -> None:
    """Closing a sandbox from another thread mid-snippet stops the guest for sure:
    the worker thread ends, the CPU goes quiet and the store is freed."""
    box = make_sandbox(SandboxLimits(fuel=10**15, wall_clock_s=120))
    box.run("x = 1")
    session = box.session
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(box.run("while True:\n    x += 1")))
    runner.start()
    time.sleep(0.3)
    (guest,) = _guest_threads()
    started = time.monotonic()
    box.close()
    guest.join(timeout=3.0)
    assert not guest.is_alive(), "the guest kept running after close()"
    runner.join(timeout=3.0)
    assert not runner.is_alive()
    assert time.monotonic() - started < 3.0
    (result,) = results
    assert result.trapped and result.error_type == "Closed", result.error
    assert "closed" in result.error
    assert session._worker.store is None  # the ~64 MB of linear memory is released
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.3)
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert (after.ru_utime - cpu.ru_utime) < 0.15  # nothing spins any more
    with pytest.raises(SandboxClosed):
        box.run("1")


def test_closing_an_idle_session_ends_its_thread(make_sandbox) -> None:
    box = make_sandbox()
    box.run("y = 2")
    session = box.session
    (guest,) = _guest_threads()
    box.close()
    assert not guest.is_alive() and session._worker.store is None


def _hog(stop: threading.Event) -> None:
    # One C call holds the GIL for tens of milliseconds: the epoch ticker thread
    # (and everything else in Python) waits for it, as under a CPU-starved host.
    while not stop.is_set():
        sum(range(2_000_000))


def test_wall_clock_holds_when_the_ticker_is_starved(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(fuel=10**15, wall_clock_s=0.5))
    box.run("1")
    stop = threading.Event()
    hogs = [threading.Thread(target=_hog, args=(stop,), daemon=True) for _ in range(3)]
    for hog in hogs:
        hog.start()
    try:
        result = box.run("while True:\n    pass")
    finally:
        stop.set()
        for hog in hogs:
            hog.join()
    # Counted ticks stretched the 0.5 s to several seconds (each tick waited for the GIL),
    # so the caller's backstop abandoned the guest as "Stuck" at 2.5 s. The real deadline
    # is late only by a few GIL hand-overs (~0.2-0.8 s on a loaded 2-core machine).
    assert result.trapped and result.error_type == "Timeout", result.error
    assert result.duration_s < 2.4, result.duration_s


@pytest.fixture
def special_workspace(workspace: Path) -> Path:
    """The workspace with a FIFO nobody writes to, and links to it."""
    os.mkfifo(workspace / "pipe")
    (workspace / "docs" / "pipe-link").symlink_to(workspace / "pipe")
    return workspace


@pytest.mark.parametrize("path", ["pipe", "/input/pipe", "docs/pipe-link", "docs/../pipe"])
def test_host_read_refuses_special_files_without_blocking(
    make_sandbox, special_workspace: Path, path: str
) -> None:
    box = make_sandbox(SandboxLimits(wall_clock_s=2), workspace=special_workspace)
    result = box.run(f"read({path!r})")
    assert result.error_type == "HostError", result.error
    assert "not a regular file" in result.error
    assert result.duration_s < 1.5 and not result.trapped


@pytest.mark.parametrize(
    "code",
    [
        "open('/input/pipe').read()",
        "open('/input/pipe', 'rb').read(10)",
        "open('/input/docs/pipe-link').read()",
        "open('/input/docs/../pipe').read()",
    ],
)
def test_guest_open_of_a_fifo_fails_instead_of_blocking(
    make_sandbox, special_workspace: Path, code: str
) -> None:
    box = make_sandbox(SandboxLimits(wall_clock_s=2), workspace=special_workspace)
    result = box.run(code)
    assert result.error_type == "OSError" and not result.trapped, result.error
    assert result.duration_s < 1.5
    # The mount still works: regular files, directories, listing (the FIFO is listed).
    assert box.run("open('/input/notes.txt').read()").result == repr("alpha\nbeta\n")
    assert box.run("import os\nsorted(os.listdir('/input'))").result == repr(
        ["docs", "notes.txt", "pipe"]
    )
    assert "pipe-link" in box.run("os.listdir('/input/docs')").result


def test_host_read_checks_the_file_it_opened(workspace: Path) -> None:
    from loopbus.agents.sandbox.core import workspace_reader

    read = workspace_reader(workspace, 1024)
    assert read("notes.txt") == "alpha\nbeta\n"
    (workspace / "big.txt").write_text("x" * 2000)
    with pytest.raises(ValueError, match="over the 1,024-byte host-call limit"):
        read("big.txt")
    os.mkfifo(workspace / "late")
    with pytest.raises(OSError, match="not a regular file"):
        read("late")


@pytest.mark.parametrize(
    "call",
    [
        "host.call('__done__', FAKE)",
        "print.__globals__['_xcall']('__done__', FAKE)",
        "host.call('__hello__', '')",
        "host.call('__take__', '')",
        "host.call('__o1__', 'injected output')",
        "host.call('__anything__', '[[], {}]')",
    ],
)
def test_guest_code_cannot_make_the_protocols_reserved_calls(make_sandbox, call: str) -> None:
    box = make_sandbox()
    result = box.run(f'import host\nFAKE = \'{{"r": "42"}}\'\nanswer = {call}\nprint(answer)\n7')
    assert result.ok and result.result == "7", result
    assert "reserved for the sandbox itself" in result.stdout
    assert "injected" not in result.stdout.split("reserved")[0]
    after = box.run("8")  # the protocol is still in step: same session, the right snippet
    assert after.result == "8" and not after.fresh_session


def test_patching_the_bootstrap_cannot_fake_a_report(make_sandbox) -> None:
    box = make_sandbox()
    result = box.run(
        "import __main__\n"
        '__main__._dumps = lambda r: \'{"r": "42"}\'\n'
        "__main__._exec = __main__._loads = __main__._xcall = None\n"
        "5"
    )
    assert result.ok and result.result == "5", result
    assert box.run("print(6 * 7)\n6").stdout == "42\n"
    for method in ("send('print(1)')", "close()", "throw(ValueError)"):
        attempt = box.run(f"print.__globals__['_RUN'].{method}")
        assert attempt.error_type == "ValueError" and "already executing" in attempt.error
    assert box.run("9").result == "9"


@pytest.mark.parametrize(
    "code",
    [
        "import uctypes",
        "import machine",
        "import umachine",
        "import builtins",
        "import ubuiltins",
        "__import__('uctypes')",
        "from uctypes import bytearray_at",
    ],
)
def test_raw_memory_modules_cannot_be_imported(make_sandbox, code: str) -> None:
    # uctypes / machine.mem8 read linear memory, where the protocol's key lives;
    # builtins would let a snippet remove the import guard.
    result = make_sandbox().run(code)
    assert result.error_type == "ImportError", result.error
