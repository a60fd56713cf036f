"""Committing a lone write on the event loop's own thread (the async bus's fast path).

A write through aiosqlite costs two thread wake-ups (loop -> writer thread -> loop): about
0.1 ms on the 2-core VM where issue 2's figures were taken, against a 0.14 ms FULL commit.
When a single operation is queued and nothing else wants the writer, committing it right on
the loop thread skips both hops. The price is blocking the loop for one commit, so the fast
path is taken only while it stays cheap:

* its connection has ``busy_timeout = 0``: if another connection holds the write lock,
  ``BEGIN IMMEDIATE`` fails at once and the operation goes to the writer thread, which waits
  for the lock as usual, so the loop never waits for another writer;
* when commits stay slower than :data:`SLOW_COMMIT_S` (a moving average, so that one fsync
  spike does not count: a slow disk, a network file system), the fast path is off for
  :data:`BACKOFF_S`, then tried again;
* it never checkpoints (``wal_autocheckpoint = 0``). Once its commits have written about
  :data:`CHECKPOINT_PAGES` pages, the bus runs a checkpoint on the writer thread, with writes
  held back meanwhile (they queue, then go as one group commit): only a checkpoint that
  finishes before the next write lets SQLite restart the WAL from its beginning. Without
  that, the WAL file grows with every commit and each fsync costs twice as much (measured).

Concurrent writes still go through the writer thread together (group commit): when other tasks
are ready to run, the bus decides after they have (see :mod:`loopbus.bus.sqlite.commit`).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from loopbus.bus.sqlite import sqlops

# Fast-path commits slower than this on average block the loop too long: use the writer
# thread for a while. A FULL commit takes ~0.15-0.2 ms on an SSD-backed VM, less on a Mac.
SLOW_COMMIT_S = 0.002
BACKOFF_S = 1.0
_AVERAGE_WEIGHT = 0.2  # of the newest commit in the moving average
# SQLite's own auto-checkpoint point, in WAL pages; a small commit writes ~3 pages (the table
# and index leaves) plus the payload's size in pages.
CHECKPOINT_PAGES = 1000
_SMALL_COMMIT_PAGES = 3


class InlineWriter:
    """A writer connection used from the event loop's thread for lone, uncontended commits."""

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._off_until = 0.0
        self._average_s = 0.0
        self._pages = 0  # estimated WAL pages written since the last checkpoint

    def available(self) -> bool:
        """Whether the fast path is on (not backing off after a slow commit)."""
        return self._off_until == 0.0 or time.monotonic() >= self._off_until

    def connection(self) -> sqlite3.Connection:
        """The fast path's connection, opened on first use."""
        if self._conn is not None:
            return self._conn
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def data_version(self) -> int | None:
        """SQLite's ``PRAGMA data_version`` on this connection: it changes whenever another
        connection (any process) commits. None when it cannot be read (closed, busy)."""
        if self._closed:
            return None
        try:
            return self.connection().execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None

    def commit(self, op: sqlops.Op, before_commit: Any) -> tuple[bool, Any]:
        """Try to commit ``op`` in its own transaction; ``(False, None)`` if the write lock
        is taken (or the connection cannot be opened): the caller then uses the writer thread.

        Otherwise ``(True, result)``, where ``result`` is what ``apply_ops`` gave for ``op``,
        or the exception that rolled the transaction back.
        """
        if self._closed:
            return False, None
        try:
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return False, None
        started = time.perf_counter()
        result: Any
        try:
            result = sqlops.apply_ops(conn, [op])[0]
            before_commit()
            conn.execute("COMMIT")
        except BaseException as exc:
            # Never leave the write lock held (a Ctrl-C here would stall every later write).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not isinstance(exc, Exception):
                raise
            result = exc  # handed to the caller, as the writer thread does
        elapsed = time.perf_counter() - started
        self._average_s += _AVERAGE_WEIGHT * (elapsed - self._average_s)
        if self._average_s > SLOW_COMMIT_S:
            # Probe again after the back-off, starting from a clean average.
            self._off_until = time.monotonic() + BACKOFF_S
            self._average_s = 0.0
        else:
            self._off_until = 0.0
        return True, result

    def checkpoint_due(self, op: sqlops.Op) -> bool:
        """Count the WAL pages a committed ``op`` wrote (estimated); True once they reach
        :data:`CHECKPOINT_PAGES` (the count then starts again)."""
        kind, arg = op[0], op[1]
        size = 0
        if kind == sqlops.PUBLISH:
            size = len(arg[2])
        elif kind == sqlops.PUBLISH_MANY:
            size = sum(len(row[2]) for row in arg)
        self._pages += _SMALL_COMMIT_PAGES + size // 4096
        if self._pages < CHECKPOINT_PAGES:
            return False
        self._pages = 0
        return True

    def close(self) -> None:
        """Close the connection for good (idempotent)."""
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def passive_checkpoint(conn: sqlite3.Connection) -> None:
    """Writer thread: copy the WAL's pages back into the database (what SQLite's
    auto-checkpoint would have done after the fast path's commits)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error:  # best effort: the next checkpoint (or SQLite's own) catches up
        pass
