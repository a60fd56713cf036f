"""Leases: at most one live process per name (an agent instance) on one bus.

``store.lease(name)`` returns a held :class:`Lease` or raises :class:`LeaseHeld` naming the
holder (host, pid, when). A lease ends with :meth:`Lease.release`, with the process, or with
its connection: a SIGKILLed holder frees it at once, nothing has to expire.

* SQLite: an ``flock`` on ``<bus file>.leases/<name>.lock`` (the kernel drops it when the
  process dies); the file holds the holder's description.
* PostgreSQL: a session advisory lock on a connection of the lease's own (the server drops
  it when that connection ends); the ``leases`` table holds the holder's description.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Protocol

from loopbus.bus.errors import BusError


class LeaseHeld(BusError):
    """Another live process holds the lease (``holder`` describes it)."""

    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class Lease(Protocol):
    """A held lease; release it (or use ``with``) when done."""

    name: str

    def release(self) -> None: ...

    def __enter__(self) -> Lease: ...

    def __exit__(self, *exc: object) -> None: ...


def holder_description() -> str:
    """Who takes a lease: host, pid and UTC time, as JSON text."""
    return json.dumps(
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


def describe_holder(text: str | None) -> str:
    """``pid 12 on host h since T`` from a holder description (or a placeholder)."""
    try:
        data = json.loads(text or "")
        return f"pid {data['pid']} on host {data['host']} since {data['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def held_message(name: str, where: str, holder: str | None) -> str:
    """The error text for a lease another process holds."""
    return (
        f"{name} is already running on the bus {where} ({describe_holder(holder)}); only one "
        "process may run it: stop that one first (or, for `loopbus up` on several hosts, "
        "split the instances with --share K/M)"
    )


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise BusError(f"invalid lease name {name!r}: a non-empty string of <= 200 characters")
    return name


class FileLease:
    """A lease on a SQLite bus: an exclusive ``flock`` on a file next to the bus."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self._fd: int | None = fd

    def release(self) -> None:
        """Give the lease up (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> FileLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lease_dir_for(bus_path: str | os.PathLike[str]) -> Path:
    """The directory of a SQLite bus's lease files."""
    return Path(os.path.realpath(bus_path) + ".leases")


def _lease_file(bus_path: str | os.PathLike[str], name: str) -> Path:
    # Names like "reviewer#0/2" hold characters a file name cannot: hash them.
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return lease_dir_for(bus_path) / f"{digest}.lock"


def file_lease(bus_path: str | os.PathLike[str], name: str) -> FileLease:
    """Take the lease ``name`` on the SQLite bus at ``bus_path`` or raise LeaseHeld."""
    import fcntl

    _check_name(name)
    path = _lease_file(bus_path, name)
    try:
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise BusError(f"cannot take the lease {name!r} in {path.parent}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        os.close(fd)
        raise LeaseHeld(held_message(name, str(bus_path), holder), holder) from None
    except BaseException:
        os.close(fd)
        raise
    text = holder_description().encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)
    return FileLease(name, fd)


def file_lease_holder(bus_path: str | os.PathLike[str], name: str) -> str | None:
    """The holder description of lease ``name`` if a live process holds it, else None."""
    try:
        file_lease(bus_path, name).release()
    except LeaseHeld as exc:
        return exc.holder
    return None


__all__ = [
    "FileLease",
    "Lease",
    "LeaseHeld",
    "describe_holder",
    "file_lease",
    "file_lease_holder",
    "held_message",
    "holder_description",
    "lease_dir_for",
]
