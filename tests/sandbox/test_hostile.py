"""Hostile guests: each is contained, gets a clear error, and leaves the host process usable."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from loopbus.agents.sandbox.core import SandboxLimits

MiB = 1024 * 1024


def _still_usable(box) -> None:  # type: ignore[no-untyped-def]
    """After any attack the same Sandbox object keeps working."""
    assert box.run("print(sum([1, 2, 3]))").stdout == "6\n"


def test_infinite_loop_hits_the_wall_clock(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(fuel=10**15, wall_clock_s=0.3))
    result = box.run("while True:\n    pass")
    assert result.trapped and result.error_type == "Timeout"
    assert "0.3 s wall-clock limit" in result.error and "session was reset" in result.error
    assert 0.25 < result.duration_s < 2.5
    _still_usable(box)


def test_tight_loop_under_the_clock_runs_out_of_fuel(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(fuel=20_000_000, wall_clock_s=30))
    result = box.run("x = 0\nfor i in range(10**9):\n    x += i")
    assert result.trapped and result.error_type == "FuelExhausted"
    assert result.fuel_used == 20_000_000
    assert "20,000,000 wasm instructions" in result.error
    assert result.duration_s < 5
    _still_usable(box)


def test_memory_bomb_raises_memory_error(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(memory_bytes=8 * MiB))
    result = box.run("chunks = []\nwhile True:\n    chunks.append(bytearray(256 * 1024))")
    # The MicroPython heap (3/4 of linear memory) runs out first: a catchable MemoryError
    # and the session lives on. The artifact's GC sometimes crashes instead under this
    # pressure: then it must be a contained trap with a clear error.
    if result.trapped:
        assert result.error_type == "Crash" and "session was reset" in result.error
        _still_usable(box)
        return
    assert result.error_type == "MemoryError", result.error
    assert "memory allocation failed" in result.error
    assert box.run("chunks = None\nimport gc\ngc.collect()\nlen('ok')").result == "2"


def test_memory_bomb_cannot_exceed_linear_memory(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(memory_bytes=8 * MiB))
    result = box.run("b = bytearray(64 * 1024 * 1024)")
    # A MemoryError, or (artifact bug: one huge failed allocation breaks the guest's
    # exception unwinding) the interpreter stops and the session is reset. Contained.
    assert result.error_type in ("MemoryError", "Exit", "Crash"), result.error
    if result.trapped:
        assert "session was reset" in result.error
    _still_usable(box)


def test_deep_python_recursion_is_a_recursion_error(make_sandbox) -> None:
    box = make_sandbox()
    result = box.run("def f(n):\n    return f(n + 1)\nf(0)")
    assert not result.trapped and result.error_type == "RuntimeError"
    assert "maximum recursion depth exceeded" in result.error
    assert "more lines" in result.error  # the traceback is shortened for the model
    _still_usable(box)


def test_deeply_nested_structure_crash_is_contained(make_sandbox) -> None:
    box = make_sandbox()
    result = box.run("l = []\nfor i in range(200000):\n    l = [l]\nprint(repr(l)[:10])")
    # Either MicroPython notices (RuntimeError/MemoryError) or the interpreter traps: both contained.
    assert result.error is not None
    if result.trapped:
        assert result.error_type == "Crash" and "nested too deeply" in result.error
    _still_usable(box)


@pytest.mark.parametrize("cap", [None, 4096])
def test_million_line_print_completes_truncated_with_bounded_memory(make_sandbox, cap) -> None:
    limits = SandboxLimits() if cap is None else SandboxLimits(max_stdout_bytes=cap)
    box = make_sandbox(limits)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = box.run("for i in range(1000000):\n    print(i)")
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    # Default limits: the snippet finishes (no trap, no reset); output past the cap was
    # discarded as it was produced, and the marker counts it exactly.
    assert result.ok and not result.trapped, result.error
    assert result.stdout_truncated
    assert result.stdout.startswith("0\n1\n2\n")
    total = sum(len(f"{i}\n") for i in range(1000000))  # 6,888,890 bytes
    shown = limits.max_stdout_bytes
    assert f"output truncated: {total - shown} more bytes not shown" in result.stdout
    assert len(result.stdout.encode()) < shown + 200
    assert result.fuel_used < limits.fuel // 2  # ~8e9: no per-line work beyond the print
    assert rss_growth_kib < 64 * 1024  # the 6.9 MB of output was never held by the host
    assert box.run("print(sum([1, 2, 3]))").fresh_session is False  # same session lives on
    _still_usable(box)


def test_print_flood_that_traps_still_marks_the_truncation(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(fuel=200_000_000, max_stdout_bytes=100))
    result = box.run("while True:\n    print('flood')")
    assert result.trapped and result.error_type == "FuelExhausted"
    assert "out of memory" not in result.error
    assert result.stdout.startswith("flood\n" * 16)
    assert result.stdout_truncated and "output truncated: at least " in result.stdout
    _still_usable(box)


def test_heavy_gc_print_loop_completes(make_sandbox) -> None:
    # 8 MiB: the print loop's garbage triggers several collections while the snippet runs.
    box = make_sandbox(SandboxLimits(memory_bytes=8 * MiB, max_stdout_bytes=100))
    result = box.run("for i in range(300000):\n    print(i)")
    assert result.ok and not result.trapped, result.error
    assert result.stdout.startswith("0\n1\n2\n") and result.stdout_truncated
    assert box.run("print(i)").stdout == "299999\n"  # same session, globals intact


def test_collections_under_large_frames_are_safe(make_sandbox) -> None:
    """Regression: frame states taken from the GC heap were freed by a collection (wild
    pointers, "memory out of bounds") - in the bootstrap and in user functions alike."""
    box = make_sandbox(SandboxLimits(memory_bytes=8 * MiB), summarize=lambda text: text[:5])
    code = """
import gc, sys

def churn():
    gc.collect()
    junk = [str(i) * 3 for i in range(5000)]  # reuses whatever a collection freed
    return len(junk)

class Loud:
    def __str__(self):
        churn()
        return 'loud'

def work(n):
    a = b = c = d = e = f = g = h = 0  # a frame state far over 11 words
    acc = []
    for i in range(n):
        s = str(i)
        if i % 10000 == 0:
            acc.append(s)
            churn()
    try:
        churn()
    except ValueError as err:
        acc.append(err)
    return len(acc) + a + b + c + d + e + f + g + h

print(work(100000))
print(Loud())
print('x', Loud(), 'y', sep='-')
print(Loud(), file=sys.stderr)
print(len(str(summarize('s' * 1000))), churn())
"""
    for _ in range(3):
        result = box.run(code)
        assert result.ok and not result.trapped, result.error
        assert result.stdout == "10\nloud\nx-loud-y\n5 5000\n"
        assert result.stderr == "loud\n"
    _still_usable(box)


def test_frame_state_patch_applies_to_the_shipped_artifact() -> None:
    from loopbus.agents.sandbox.runtime import default_artifact, patch_frame_state

    data = default_artifact().read_bytes()
    patched = patch_frame_state(data)
    assert len(patched) == len(data)
    assert sum(a != b for a, b in zip(data, patched, strict=True)) == 1
    assert patch_frame_state(b"\0asm unknown build") == b"\0asm unknown build"


def test_stdout_truncation_count_is_exact(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(max_stdout_bytes=100))
    result = box.run("for i in range(5000):\n    print('x' * 9)")
    assert result.ok and result.stdout.startswith("xxxxxxxxx\n" * 10)
    assert "output truncated: 49900 more bytes not shown" in result.stdout


def test_stderr_flood_is_truncated(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(max_stderr_bytes=100))
    result = box.run("import sys\nfor i in range(1000):\n    print('e' * 50, file=sys.stderr)")
    assert result.stderr_truncated and result.stderr.startswith("e" * 50)
    assert "output truncated" in result.stderr


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../secret.txt",
        "/input/../secret.txt",
        "/input/../../etc/passwd",
        "/proc/self/environ",
    ],
)
def test_host_files_are_invisible(make_sandbox, workspace: Path, path: str) -> None:
    box = make_sandbox(workspace=workspace)
    result = box.run(f"open({path!r}).read()")
    assert result.error_type == "OSError", result.error
    via_host = box.run(f"read({path!r})")
    assert via_host.error_type == "HostError"
    assert "outside the workspace" in via_host.error or "only workspace files" in via_host.error


def test_without_mount_nothing_is_visible(make_sandbox) -> None:
    box = make_sandbox()
    assert box.run("import os\nos.listdir('/')").error_type == "OSError"
    assert "no workspace is mounted" in box.run("read('x')").error


@pytest.mark.parametrize(
    "code",
    [
        "open('/input/new.txt', 'w').write('x')",
        "open('/input/notes.txt', 'a').write('x')",
        "open('/input/notes.txt', 'w')",
        "import os\nos.mkdir('/input/d')",
        "import os\nos.remove('/input/notes.txt')",
        "import os\nos.rename('/input/notes.txt', '/input/n2.txt')",
    ],
)
def test_input_mount_is_read_only(make_sandbox, workspace: Path, code: str) -> None:
    before = {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()}
    result = make_sandbox(workspace=workspace).run(code)
    assert result.error_type == "OSError", result.error
    assert {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()} == before


def test_symlink_escape_is_refused(make_sandbox, workspace: Path) -> None:
    (workspace / "link").symlink_to(workspace.parent / "secret.txt")
    box = make_sandbox(workspace=workspace)
    assert "outside the workspace" in box.run("read('link')").error
    assert box.run("open('/input/link').read()").error_type == "OSError"


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ("import socket", "ImportError"),
        ("import subprocess", "ImportError"),
        ("import ctypes", "ImportError"),
        ("import os\nos.system('echo pwned')", "AttributeError"),
        ("import os\nos.popen('ls')", "AttributeError"),
        ("import requests\nrequests.get('http://example.com')", "ImportError"),
        ("import time\ntime.sleep(30)", "OSError"),
    ],
)
def test_no_processes_network_or_blocking(make_sandbox, code: str, error_type: str) -> None:
    result = make_sandbox().run(code)
    assert result.error_type == error_type, result.error
    assert result.duration_s < 5


def test_huge_host_call_payload_is_refused(make_sandbox) -> None:
    calls: list[str] = []
    box = make_sandbox(
        SandboxLimits(max_host_payload_bytes=4096), llm=lambda p: calls.append(p) or "ok"
    )
    result = box.run(
        "try:\n    llm('x' * 100000)\nexcept HostLimitError as e:\n    print('refused:', e)"
    )
    assert "refused: llm(): arguments are" in result.stdout and "4,096 bytes" in result.stdout
    assert calls == []  # the callable never saw it


def test_huge_host_call_result_is_refused(make_sandbox) -> None:
    box = make_sandbox(
        SandboxLimits(max_host_payload_bytes=4096), host_functions={"big": lambda: "y" * 100000}
    )
    result = box.run("big()")
    assert result.error_type == "HostLimitError"
    assert "big() returned" in result.error and "limit is 4,096 bytes" in result.error


def test_host_call_flood_is_cut_off(make_sandbox) -> None:
    seen: list[int] = []
    box = make_sandbox(
        SandboxLimits(max_host_calls=5), host_functions={"ping": lambda i: seen.append(i) or i}
    )
    result = box.run("n = 0\nwhile True:\n    ping(n)\n    n += 1")
    assert result.error_type == "HostLimitError" and "at most 5 host function calls" in result.error
    assert seen == [0, 1, 2, 3, 4] and result.host_calls == 6
    assert box.run("ping(99)").result == "99"  # the budget is per snippet


def test_catching_the_limit_does_not_reopen_it(make_sandbox) -> None:
    seen: list[int] = []
    box = make_sandbox(
        SandboxLimits(max_host_calls=3, fuel=300_000_000),
        host_functions={"ping": lambda: seen.append(1)},
    )
    result = box.run(
        "while True:\n    try:\n        ping()\n    except HostLimitError:\n        pass"
    )
    assert result.trapped and result.error_type == "FuelExhausted"
    assert len(seen) == 3


def test_raising_host_function_is_catchable(make_sandbox) -> None:
    def explode(x: int) -> int:
        raise KeyError(f"no item {x}")

    box = make_sandbox(host_functions={"explode": explode})
    result = box.run(
        "try:\n    explode(3)\nexcept HostError as e:\n    msg = str(e)\nprint(msg)\nisinstance(HostError(), Exception)"
    )
    assert result.stdout == "explode() failed: KeyError: 'no item 3'\n" and result.result == "True"
    uncaught = box.run("explode(4)")
    assert uncaught.error_type == "HostError" and "no item 4" in uncaught.error


def test_guest_that_never_returns_control(make_sandbox) -> None:
    """Recursion-free, allocation-free, host-call-free spin: only the epoch stops it."""
    box = make_sandbox(SandboxLimits(fuel=10**15, wall_clock_s=0.5))
    result = box.run(
        "def spin():\n    while 1:\n        try:\n            spin_x = 1\n        except BaseException:\n            pass\nspin()"
    )
    assert result.trapped and result.error_type == "Timeout"
    _still_usable(box)


def test_guest_cannot_catch_a_trap(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(fuel=30_000_000))
    result = box.run("try:\n    while True: pass\nexcept BaseException:\n    print('caught')")
    assert result.trapped and "caught" not in result.stdout


def test_sys_exit_does_not_kill_the_session(make_sandbox) -> None:
    box = make_sandbox()
    box.run("kept = 7")
    result = box.run("import sys\nsys.exit(3)")
    assert result.error_type == "SystemExit" and not result.trapped
    assert box.run("kept").result == "7"


def test_spoofing_the_bridge_stays_inside(make_sandbox) -> None:
    box = make_sandbox()
    result = box.run("import host\nhost.call('nope', '[[], {}]')")
    assert result.ok and "unknown host function" in box.run("host.call('nope', '[[], {}]')").result
    _still_usable(box)


def test_oversized_code_is_rejected_without_running(make_sandbox) -> None:
    box = make_sandbox(SandboxLimits(max_host_payload_bytes=2048))
    result = box.run("x = 1\n" * 1000)
    assert result.error_type == "CodeTooLarge" and not result.trapped
