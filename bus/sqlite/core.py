"""The async bus: :class:`Bus` (publish, subscribe, ack, transactions, retention).

Durability and concurrency design (measured facts in issue 2; figures in bench/bench_bus.py):

* One file in WAL mode; ``synchronous=FULL`` by default, so a publish returns only after its
  commit is on disk. ``synchronous="NORMAL"`` is an explicit opt-in that may lose the last
  commits on power loss (never on a process crash) and is about 10x faster per commit.
* Every write transaction starts with ``BEGIN IMMEDIATE`` (a deferred read-then-write
  transaction fails with SQLITE_BUSY regardless of ``busy_timeout``), ``busy_timeout`` >= 5 s.
* Group commit (:mod:`loopbus.bus.sqlite.commit`): concurrent writes share one transaction and one fsync on
  the aiosqlite writer thread, in a single thread hop; a lone write commits on the loop thread
  when the write lock is free and commits are fast (:mod:`loopbus.bus.sqlite.inline`: the hop costs about as
  much as a FULL commit on a small VM). Validation builds no models on this path
  (:func:`loopbus.bus.events.prepare_row`).
* Reads use a second connection (its own thread), so they never wait behind an fsync and
  never see another task's uncommitted transaction.
* After each commit that added events the writer rings the wake-up doorbell
  (:mod:`loopbus.bus.sqlite.wakeup`) just before handing the results back; subscribers always re-query
  ``id > position``, with a safety poll.
* A subscription with a backlog reads its next batch ahead; the next commit starts that
  read just before its COMMIT, so it overlaps the fsync (:mod:`loopbus.bus.sqlite.subscription`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from loopbus.bus.errors import (
    BusClosed,
    BusError,
    BusNotFound,
    BusReadOnly,
    PayloadTooLarge,
    PruneWarning,
    check_bus_path,
    not_utf8_message,
)
from loopbus.bus.events import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    NewEvent,
    PruneReport,
    check_id,
    check_name,
    prepare_row,
)
from loopbus.bus.sqlite import migrations, sqlops
from loopbus.bus.sqlite.commit import CommitQueue
from loopbus.bus.sqlite.inline import InlineWriter
from loopbus.bus.sqlite.reading import ReadAPI
from loopbus.bus.sqlite.readonly import is_read_only, read_only_uri
from loopbus.bus.sqlite.subscription import Subscription
from loopbus.bus.sqlite.transaction import CURRENT_TX, Transaction
from loopbus.bus.sqlite.wakeup import Doorbell, Listener, wake_dir_for

log = logging.getLogger("loopbus.bus")

DEFAULT_BUS_FILE = "loopbus.db"
MIN_BUSY_TIMEOUT_S = 5.0
MAX_SAFETY_POLL_S = 1.0


def default_bus_path() -> Path:
    """The bus file used when none is given: ``$LOOPBUS_BUS``, else ``./loopbus.db``."""
    from loopbus.bus.store import sqlite_path

    env = os.environ.get("LOOPBUS_BUS")
    return Path(sqlite_path(env)) if env else Path(DEFAULT_BUS_FILE)


@dataclass
class BusStats:
    """Counters of one :class:`Bus` instance (for tests and benchmarks)."""

    transactions: int = 0  # committed write transactions (each is one fsync at FULL)
    events: int = 0  # events this instance published
    batches: int = 0  # group-commit batches run
    largest_batch: int = 0  # most operations committed together


class Bus(CommitQueue, ReadAPI):
    """An open bus file. Create with ``await Bus.open(...)`` or ``async with Bus.connect(...)``.

    A ``Bus`` belongs to the event loop that opened it. Several processes may open the same
    file; several ``Bus`` instances in one process work too (they do not share group commits).
    """

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        *,
        synchronous: str,
        max_payload_bytes: int,
        safety_poll_s: float,
        busy_timeout_s: float,
        read_only: bool = False,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.synchronous = synchronous
        self.max_payload_bytes = max_payload_bytes
        self.safety_poll_s = safety_poll_s
        self.busy_timeout_s = busy_timeout_s
        self._busy_ms = int(busy_timeout_s * 1000)
        self.stats = BusStats()
        self._writer = writer
        self._reader = reader
        self._wconn: sqlite3.Connection = writer._conn
        self._rconn: sqlite3.Connection = reader._conn
        self._loop = asyncio.get_running_loop()
        self._listener = Listener(wake_dir_for(path))
        self._doorbell = Doorbell(self._listener.wake_dir, own_name=self._listener.name)
        # Writer state (loop thread only): queued operations, whether a batch is on the
        # writer thread, whether a transaction/prune owns the writer, who waits for it.
        self._pending: list[tuple[int, Any, asyncio.Future[Any]]] = []
        self._inflight = False
        self._flush_scheduled = False
        self._turned_at = 0.0  # when a write last gave the loop a turn (loopbus.bus.sqlite.commit)
        # Lone writes commit on the loop thread when that is cheap (see loopbus.bus.sqlite.inline).
        self._inline = InlineWriter(os.path.abspath(path), synchronous)
        self._exclusive = False
        self._exclusive_waiters: list[asyncio.Future[None]] = []
        self._closed = False
        # aiosqlite's worker queue (see _start_batch); None if a future aiosqlite drops it.
        tx = getattr(writer, "_tx", None)
        self._submit: Callable[[Any], None] | None = getattr(tx, "put_nowait", None)
        # Subscriptions' read-aheads for the writer thread to start before its next COMMIT
        # (see Subscription._read_ahead); the lock makes starting one exactly-once.
        self._kicks: dict[Any, Callable[[], None]] = {}
        self._kick_lock = threading.Lock()
        # Acks made through this bus (subscriptions retry committing their scanned position
        # when it changes, see loopbus.bus.sqlite.subscription).
        self._acks = 0

    # ------------------------------------------------------------------ open / close

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        synchronous: str = "FULL",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        create: bool = True,
        safety_poll_s: float = MAX_SAFETY_POLL_S,
        busy_timeout_s: float = 10.0,
    ) -> Bus:
        """Open (and create/migrate) a bus file.

        ``path``: the file (default :func:`default_bus_path`). ``synchronous``: ``"FULL"``
        (durable commits, the default) or ``"NORMAL"`` (opt-in: faster, the last commits may
        be lost on power loss). ``max_payload_bytes``: payload limit (JSON-encoded).
        ``create=False`` raises BusNotFound for a missing file. ``safety_poll_s``: how often
        a waiting subscriber re-checks without a wake-up (only tests raise it above 1 s).
        ``busy_timeout_s``: how long a write waits for another process's lock (>= 5 s).

        A bus this process cannot write (read-only media, no write permission on the file or
        its directory) opens read-only: reads and ``follow`` work, writes raise BusReadOnly.

        Raises SchemaTooNew for a file from a newer loopbus, NotABus for a foreign file.
        """
        from loopbus.bus.store import backend_of, sqlite_path

        if path is not None and backend_of(path) != "sqlite":
            # Bus/SyncBus are the SQLite backend; bus.open(url) picks any backend.
            raise BusError(
                f"{path!r} is not a SQLite bus file, and this command (or Bus/SyncBus) opens "
                "SQLite buses only; bus.open(url) opens any backend"
            )
        bus_path = Path(sqlite_path(path) if path is not None else default_bus_path()).expanduser()
        mode = str(synchronous).upper()
        if mode not in ("FULL", "NORMAL"):
            raise BusError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        if not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
            raise BusError(
                f"max_payload_bytes must be a positive integer, not {max_payload_bytes!r}"
            )
        if not 0 < safety_poll_s:
            raise BusError(f"safety_poll_s must be positive, not {safety_poll_s!r}")
        busy_timeout_s = max(float(busy_timeout_s), MIN_BUSY_TIMEOUT_S)
        check_bus_path(bus_path)  # a FIFO, a device or a directory never reaches SQLite
        if not bus_path.exists():
            if not create:
                raise BusNotFound(
                    f"no bus file at {bus_path}; publish an event to create it, or pass the "
                    "path of an existing bus with --bus / $LOOPBUS_BUS"
                )
            if not bus_path.parent.is_dir():
                # Never create directories: a mistyped --bus path would silently start a new,
                # empty bus somewhere unexpected.
                raise BusError(
                    f"directory {bus_path.parent} does not exist; create it first or pass "
                    "another bus path"
                )
            if not os.access(bus_path.parent, os.W_OK | os.X_OK):
                raise BusReadOnly(
                    f"cannot create the bus {bus_path}: the directory {bus_path.parent} is "
                    "read-only; pass a bus path in a writable directory"
                )
            read_only = False
        else:
            read_only = is_read_only(bus_path)
        busy_ms = int(busy_timeout_s * 1000)
        writer = reader = None
        try:
            if read_only:
                # Two read-only connections; nothing (no WAL switch, no migration) is written.
                uri = read_only_uri(bus_path)
                writer = await aiosqlite.connect(uri, uri=True, isolation_level=None)
                await writer._execute(_prepare_read_only, writer._conn, bus_path, busy_ms)
                reader = await aiosqlite.connect(uri, uri=True, isolation_level=None)
                await reader._execute(sqlops.prepare_reader, reader._conn, busy_ms)
            else:
                writer = await aiosqlite.connect(str(bus_path), isolation_level=None)
                await writer._execute(
                    sqlops.prepare_writer, writer._conn, str(bus_path), mode, busy_ms
                )
                reader = await aiosqlite.connect(str(bus_path), isolation_level=None)
                await reader._execute(sqlops.prepare_reader, reader._conn, busy_ms)
        except BaseException as exc:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise BusError(f"cannot open bus {bus_path}: {exc}") from exc
            raise
        return cls(
            bus_path,
            writer,
            reader,
            synchronous=mode,
            max_payload_bytes=max_payload_bytes,
            safety_poll_s=float(safety_poll_s),
            busy_timeout_s=busy_timeout_s,
            read_only=read_only,
        )

    @classmethod
    def connect(cls, path: str | os.PathLike[str] | None = None, **options: Any) -> _Connector:
        """``async with Bus.connect(path, **options) as bus:`` — open, then close on exit."""
        return _Connector(cls, path, options)

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def close(self) -> None:
        """Finish queued writes, unbind the wake-up socket and close the connections."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.busy_timeout_s
        # Rare and short: only queued group commits or an open transaction can be pending.
        while (
            self._pending or self._inflight or self._exclusive or self._flush_scheduled
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        self._listener.close()
        self._inline.close()
        await self._writer.close()
        await self._reader.close()
        self._doorbell.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise BusClosed(f"the bus {self.path} is closed")
        if CURRENT_TX.get() is self:
            raise BusError(
                "this task is inside `async with bus.transaction() as tx`: use tx.publish() / "
                "tx.ack() there (bus.publish() would wait for the transaction to end)"
            )

    def check_writable(self) -> None:
        """BusReadOnly if this bus was opened read-only (read-only media, no write permission):
        for callers that should stop before any work whose results they could not publish."""
        if self.read_only:
            raise self._read_only_error()

    def _check_writable(self) -> None:
        self._check_usable()
        self.check_writable()

    def _read_only_error(self) -> BusReadOnly:
        return BusReadOnly(
            f"the bus {self.path} is read-only (read-only media, or no write permission on "
            "the file or its directory): it can be read (tail, sql, cursors) but not written; "
            "copy it to writable storage to publish"
        )

    def _wrap(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error) and "readonly" in str(exc):
            # "attempt to write a readonly database": what any write meets on a read-only
            # file (a subscription registering its consumer, too).
            err: BaseException = self._read_only_error()
            err.__cause__ = exc
            return err
        if isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "busy" in str(exc)
        ):
            err = BusError(
                f"the bus {self.path} stayed locked by another writer for more than "
                f"{self.busy_timeout_s:g} s; try again"
            )
        elif isinstance(exc, sqlite3.Error | OverflowError):
            err = BusError(f"bus {self.path}: {exc}")
        elif isinstance(exc, UnicodeEncodeError):
            # A command-line argument with bytes that are not UTF-8 (Python keeps them as
            # lone surrogates), which SQLite cannot take as text.
            err = BusError(not_utf8_message(exc))
        elif isinstance(exc, ValueError) and self._closed:
            err = BusClosed(f"the bus {self.path} is closed")
        else:
            return exc
        err.__cause__ = exc
        return err

    async def _wcall(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the writer thread (one hop)."""
        try:
            return await self._writer._execute(fn, *args)
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            wrapped = self._wrap(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    async def _rcall(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(self._rconn, *args)`` on the reader thread (one hop)."""
        if self._closed:
            raise BusClosed(f"the bus {self.path} is closed")
        try:
            return await self._reader._execute(fn, self._rconn, *args)
        except (sqlite3.Error, ValueError) as exc:
            wrapped = self._wrap(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    async def _rresult(self, fut: asyncio.Future[Any]) -> Any:
        """The result of a reader-thread future (a read-ahead), with _rcall's error mapping."""
        try:
            return await fut
        except (sqlite3.Error, ValueError) as exc:
            wrapped = self._wrap(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    # ------------------------------------------------------------------ writes

    async def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        agent: str = "cli",
        run_id: str | None = None,
        caused_by: int | None = None,
    ) -> int:
        """Publish one event; return its id once the commit is durable.

        Concurrent calls share one transaction (group commit). Raises InvalidEventType,
        InvalidPayload, PayloadTooLarge or InvalidEvent before anything is written.
        Cancelling the call does not withdraw an event already queued.
        """
        self._check_writable()
        row = prepare_row(event_type, payload, agent, run_id, caused_by, self.max_payload_bytes)
        return await self._write(sqlops.PUBLISH, row)

    def _rows(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[sqlops.Row]:
        rows: list[sqlops.Row] = []
        context = {"max_payload_bytes": self.max_payload_bytes}
        for event in events:
            if not isinstance(event, NewEvent):
                event = NewEvent.model_validate(event, context=context)
            text = event.payload_json
            if (
                len(text) * 4 > self.max_payload_bytes
                and (size := len(text.encode("utf-8"))) > self.max_payload_bytes
            ):
                raise PayloadTooLarge(
                    f"payload of a {event.event_type!r} event is {size} bytes as JSON, above "
                    f"the bus limit of {self.max_payload_bytes} bytes"
                )
            rows.append((event.agent, event.event_type, text, event.run_id, event.caused_by))
        return rows

    async def publish_many(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[int]:
        """Publish several events in one transaction (all or none); return their ids in order.

        Items may be NewEvent or dicts with NewEvent's fields. Every event is validated first.
        """
        self._check_writable()
        rows = self._rows(events)
        if not rows:
            return []
        return await self._write(sqlops.PUBLISH_MANY, rows)

    async def ack(self, consumer: str, event_id: int) -> None:
        """Commit ``consumer``'s cursor at ``event_id`` (it never moves backwards).

        Acknowledge after handling events: a consumer that crashes before its ack gets those
        events again (at-least-once). Raises BusError for an id that was never published.
        """
        self._check_writable()
        check_name("consumer", consumer)
        check_id("event id", event_id)
        error = await self._write(sqlops.ACK, (consumer, event_id))
        self._acks += 1
        if error is not None:
            raise error

    async def unregister(self, consumer: str) -> int | None:
        """Delete ``consumer``'s cursor, so it no longer holds back :meth:`prune`; return the
        cursor it had, or None for a consumer that was not registered.

        For a consumer that is gone for good (a renamed agent, a changed parallelism). Stop it
        first: a running subscription registers again when it next starts, and its next ack
        recreates the cursor.
        """
        self._check_writable()
        check_name("consumer", consumer)
        return await self._write(sqlops.UNREGISTER, consumer)

    def transaction(self) -> Transaction:
        """``async with bus.transaction() as tx:`` — publish and ack in one BEGIN IMMEDIATE
        transaction (exactly-once for effects that live in the bus). Rolled back on error."""
        self._check_writable()
        return Transaction(self)

    async def prune(self, *, dry_run: bool = False, max_age_s: float | None = None) -> PruneReport:
        """Delete events every registered consumer has acknowledged (ids are never reused).

        With ``max_age_s``, also delete events older than that, even unacknowledged: each
        consumer overtaken that way is named in the report's ``warnings`` and warned about
        loudly (``PruneWarning`` and the ``loopbus.bus`` logger). ``dry_run`` deletes nothing.
        """
        self._check_writable()
        if max_age_s is not None and not max_age_s >= 0:
            raise BusError(f"max_age_s must be >= 0 seconds, not {max_age_s!r}")
        await self._acquire_exclusive()
        try:
            report: PruneReport = await self._wcall(
                sqlops.prune, self._wconn, dry_run, max_age_s, self._busy_ms
            )
            if not dry_run:
                self.stats.transactions += 1
        finally:
            self._release_exclusive()
        for consumer in report.overtaken:
            message = next(w for w in report.warnings if repr(consumer) in w)
            log.warning(message)
            warnings.warn(message, PruneWarning, stacklevel=2)
        return report


def _prepare_read_only(conn: sqlite3.Connection, path: Path, busy_ms: int) -> None:
    """Configure a read-only "writer" connection: check the file is a bus this loopbus
    reads, and write nothing (no WAL switch, no migration)."""
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    if migrations.read_version(conn, str(path)) == 0:
        raise BusReadOnly(f"{path} is read-only and holds no bus yet; it cannot be created there")
    conn.execute("PRAGMA query_only = 1")


class _Connector:
    """Async context manager returned by :meth:`Bus.connect`."""

    def __init__(self, cls: type[Bus], path: Any, options: dict[str, Any]) -> None:
        self._cls, self._path, self._options = cls, path, options
        self._bus: Bus | None = None

    async def __aenter__(self) -> Bus:
        self._bus = await self._cls.open(self._path, **self._options)
        return self._bus

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            await self._bus.close()

    def __await__(self) -> Any:
        return self._cls.open(self._path, **self._options).__await__()


__all__ = ["Bus", "BusStats", "Subscription", "Transaction", "default_bus_path"]
