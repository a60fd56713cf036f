"""Cross-process wake-up ("doorbell") for subscribers, without busy polling.

Each waiting :class:`Listener` binds a unix datagram socket in the bus's wake directory
(``<bus>.wake/``, or a short directory under ``/tmp`` when that path is too long for a socket
name). After every commit that added events, the publisher's :class:`Doorbell` sends one byte to
every socket there; sockets whose owner died (``ECONNREFUSED``) are unlinked. This works on
Linux and macOS alike (no inotify/kqueue specifics).

The doorbell is only a hint: a subscriber always re-queries ``id > position`` and also wakes
on a safety poll, so a lost datagram costs latency, never events.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import time
from pathlib import Path

# sun_path is 104 bytes on macOS, 108 on Linux (both include the NUL).
_MAX_SOCKET_PATH = 103
# "/<pid>-<8 hex>.sock": at most 1 + 7 + 1 + 8 + 5 characters.
_MAX_NAME = 22
_SOCKET_SUFFIX = ".sock"
log = logging.getLogger("loopbus.bus")

# A directory listing is trusted while the directory's mtime is unchanged, but only once the
# mtime is this old: file-system timestamps are coarse, so a socket bound within the same tick
# as the previous change could otherwise hide behind an unchanged mtime ("racy" listing).
_RACY_NS = 2_000_000_000


def wake_dir_for(bus_path: str | os.PathLike[str]) -> Path:
    """The directory where subscribers of ``bus_path`` bind their wake-up sockets.

    Every process derives the same directory from the bus file's real path.
    """
    real = os.path.realpath(bus_path)
    preferred = real + ".wake"
    if len(os.fsencode(preferred)) + _MAX_NAME <= _MAX_SOCKET_PATH:
        return Path(preferred)
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    return Path("/tmp") / f"loopbus-wake-{digest}"


class Doorbell:
    """Publisher side: rings every subscriber socket in the wake directory.

    A bus rings from whichever thread committed (the loop's, the writer's, a SyncBus
    caller's); they rarely overlap, and a race costs at most one stale list of targets.
    """

    def __init__(self, wake_dir: Path, own_name: str | None = None) -> None:
        self.wake_dir = wake_dir
        self.own_name = own_name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._targets: list[str] = []
        self._mtime_ns = -1
        self._trusted = False
        self.rings = 0  # datagrams sent, for tests and benchmarks

    def _current_targets(self) -> list[str]:
        now = time.time_ns()
        try:
            mtime = os.stat(self.wake_dir).st_mtime_ns
            if self._trusted and mtime == self._mtime_ns:
                return self._targets
            names = os.listdir(self.wake_dir)
        except OSError:  # no directory (nobody waits) or not usable: nothing to ring
            self._targets, self._mtime_ns, self._trusted = [], -1, False
            return self._targets
        base = str(self.wake_dir)
        self._targets = [
            os.path.join(base, n)
            for n in names
            if n.endswith(_SOCKET_SUFFIX) and n != self.own_name
        ]
        self._mtime_ns = mtime
        self._trusted = now - mtime > _RACY_NS
        return self._targets

    def ring(self) -> int:
        """Send one byte to every live subscriber socket; return how many were rung.

        Never raises: a publish must not fail because of its wake-up hint.
        """
        try:
            return self._ring()
        except Exception as exc:  # noqa: BLE001
            log.warning("wake-up doorbell failed (%s); subscribers will poll", exc)
            return 0

    def _ring(self) -> int:
        rung = 0
        dead = False
        for target in self._current_targets():
            try:
                self._sock.sendto(b"\x01", target)
                rung += 1
            except BlockingIOError:
                rung += 1  # its buffer is full: it has wake-ups pending anyway
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    # Nobody is bound there any more (the process died): clean up.
                    with contextlib.suppress(OSError):
                        os.unlink(target)
                    dead = True
                elif exc.errno == errno.ENOENT:
                    dead = True
                elif exc.errno != errno.ENOBUFS:  # macOS: full buffer
                    dead = True
        if dead:
            self._trusted = False
        self.rings += rung
        return rung

    def close(self) -> None:
        """Release the sending socket."""
        self._sock.close()


class Listener:
    """Subscriber side (one per bus instance and event loop): a bound datagram socket plus a
    generation counter that local commits and remote doorbells both advance."""

    def __init__(self, wake_dir: Path) -> None:
        self.wake_dir = wake_dir
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}{_SOCKET_SUFFIX}"
        self.generation = 0
        self.wakeups = 0  # datagram batches received, for tests
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._failed = False

    @property
    def bound(self) -> bool:
        """Whether the socket is bound (other processes can ring it)."""
        return self._sock is not None

    def bind(self) -> None:
        """Bind the socket (idempotent). Must run on the event loop that will wait."""
        if self._sock is not None:
            return
        if self._failed:
            return
        self._loop = asyncio.get_running_loop()
        if self._changed is None:
            self._changed = asyncio.Event()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.wake_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            sock.setblocking(False)
            sock.bind(str(self.wake_dir / self.name))
        except OSError as exc:
            # Still correct without the doorbell, only slower: fall back to the safety poll.
            sock.close()
            self._failed = True
            log.warning("no cross-process wake-up in %s (%s); polling instead", self.wake_dir, exc)
            return
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                self._sock.recv(256)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        self.wakeups += 1
        self.notify()

    def notify(self) -> None:
        """Advance the generation and wake every waiter (called on the loop thread)."""
        self.generation += 1
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def notify_from_thread(self) -> None:
        """:meth:`notify` from another thread (SyncBus's direct publishes): bump the generation
        at once, and only wake the loop when a waiter has ever waited on it (a hint: a missed
        wake-up costs at most the safety poll)."""
        self.generation += 1
        if self._changed is not None and self._loop is not None:
            # The loop may be closing: the event is committed, never fail its publish.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.notify)

    async def wait(self, generation: int, timeout: float | None) -> bool:
        """Wait until the generation moves past ``generation`` or ``timeout`` seconds pass.

        Returns True when woken, False on timeout. Take ``generation`` *before* querying, so
        a wake-up that arrives during the query is not lost.
        """
        if self.generation != generation:
            return True
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Unbind and remove the socket file."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.wake_dir / self.name)
        self.notify()
