"""SyncBus: the async :class:`~loopbus.bus.sqlite.core.Bus` behind plain blocking methods.

The bus runs on a private event loop in a daemon thread; each method submits a coroutine
there and waits for it. Used by the CLI and the agent loop, which are synchronous.

Publishes are the exception: they run in the calling thread on a writer connection of the
SyncBus's own, with the same SQL, pragmas and ``BEGIN IMMEDIATE`` as the async bus. Going
through the loop costs four thread wake-ups per commit (measured ~0.4 ms here, more than the
fsync itself), and a blocking caller has no concurrent publishes to group-commit with.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from loopbus.bus.errors import BusClosed, BusError
from loopbus.bus.events import CursorInfo, Event, NewEvent, PruneReport, prepare_row
from loopbus.bus.sqlite import sqlops
from loopbus.bus.sqlite.core import Bus, BusStats, Transaction
from loopbus.bus.store import AppendMixin

T = TypeVar("T")


class SyncBus(AppendMixin):
    """A blocking bus: ``with SyncBus(path) as bus: bus.publish("file.found", {...})``.

    Takes the same options as :meth:`Bus.open` and has the same methods, synchronous.
    ``subscribe(consumer, types, timeout=None)`` is a plain iterator.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="loopbus-sync", daemon=True
        )
        self._thread.start()
        self._tx_threads: set[int] = set()
        self._wlock = threading.Lock()
        self._wconn: sqlite3.Connection | None = None
        try:
            self._bus: Bus = self._call(Bus.open(path, **options))
            # The file as opened now: a later chdir must not send publishes to another file.
            self._abs_path = os.path.abspath(self._bus.path)
        except BaseException:
            self._stop_loop()
            raise

    # ------------------------------------------------------------------ plumbing

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise BusClosed("this SyncBus is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C while waiting: stop the coroutine too
            raise

    def _check_not_in_tx(self) -> None:
        if threading.get_ident() in self._tx_threads:
            raise BusError(
                "this thread is inside `with bus.transaction() as tx`: use tx.publish() / "
                "tx.ack() there (bus.publish() would wait for the transaction to end)"
            )

    def _write(self, kind: int, arg: Any, queued: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """One write transaction in the calling thread (see the module docstring).

        ``queued`` makes the same write through the async bus: used while one of this bus's
        own transactions holds or waits for the write lock, so the write waits behind it
        instead of polling SQLite's lock.
        """
        self._check_not_in_tx()
        bus = self._bus
        with self._wlock:
            bus._check_writable()  # under the lock, so close() cannot slip in before the write
            if bus._exclusive or bus._exclusive_waiters:
                return self._call(queued())
            try:
                if self._wconn is None:
                    conn = sqlite3.connect(
                        self._abs_path, isolation_level=None, check_same_thread=False
                    )
                    sqlops.prepare_writer(conn, self._abs_path, bus.synchronous, bus._busy_ms)
                    self._wconn = conn
                result = sqlops.run_in_transaction(self._wconn, [(kind, arg)], bus._busy_ms)[0]
            except (sqlite3.Error, OverflowError, UnicodeEncodeError) as exc:
                raise bus._wrap(exc) from exc
            bus.stats.transactions += 1
            bus.stats.events += len(result) if kind == sqlops.PUBLISH_MANY else 1
        bus._doorbell.ring()  # other processes' subscribers
        bus._listener.notify_from_thread()  # this process's subscribers
        return result

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        """Close the bus and stop the private loop thread (idempotent)."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self._bus.close())
        finally:
            with self._wlock:
                if self._wconn is not None:
                    self._wconn.close()
                    self._wconn = None
            self._stop_loop()

    def __enter__(self) -> SyncBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The bus file."""
        return self._bus.path

    @property
    def read_only(self) -> bool:
        """Whether the bus was opened read-only (see Bus.open): writes raise BusReadOnly."""
        return self._bus.read_only

    def lease(self, name: str) -> Any:
        """Take lease ``name`` (one live process per name, e.g. an agent instance) or raise
        LeaseHeld naming the holder; it ends with ``release()``, ``with`` or the process."""
        from loopbus.bus.lease import file_lease

        self._bus._check_usable()
        return file_lease(self._abs_path, name)

    def lease_holder(self, name: str) -> str | None:
        """Who holds lease ``name`` (a JSON description), or None when nobody does."""
        from loopbus.bus.lease import file_lease_holder

        return file_lease_holder(self._abs_path, name)

    def query(self, sql: str, params: Any = (), *, timeout_s: float | None = None) -> Any:
        """Run one read-only statement on this bus (see :func:`loopbus.bus.sqlite.readonly.query`)."""
        from loopbus.bus.sqlite.readonly import query

        return query(self._abs_path, sql, params, timeout_s=timeout_s)

    def check_writable(self) -> None:
        """BusReadOnly if the bus was opened read-only (see Bus.check_writable)."""
        self._bus.check_writable()

    @property
    def max_payload_bytes(self) -> int:
        """The payload limit (bytes of JSON) this bus was opened with."""
        return self._bus.max_payload_bytes

    @property
    def stats(self) -> BusStats:
        """Counters of the underlying bus (transactions, events, batches)."""
        return self._bus.stats

    @property
    def bus(self) -> Bus:
        """The underlying async bus (only use it on this SyncBus's loop)."""
        return self._bus

    # ------------------------------------------------------------------ the bus API

    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        agent: str = "cli",
        run_id: str | None = None,
        caused_by: int | None = None,
    ) -> int:
        """Publish one event; return its id after a durable commit (see Bus.publish)."""
        self._check_not_in_tx()
        bus = self._bus
        row = prepare_row(event_type, payload, agent, run_id, caused_by, bus.max_payload_bytes)
        return self._write(
            sqlops.PUBLISH,
            row,
            lambda: bus.publish(
                event_type, payload, agent=agent, run_id=run_id, caused_by=caused_by
            ),
        )

    def publish_many(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[int]:
        """Publish several events in one transaction; their ids in order."""
        self._check_not_in_tx()
        events = list(events)
        rows = self._bus._rows(events)
        if not rows:
            return []
        return self._write(sqlops.PUBLISH_MANY, rows, lambda: self._bus.publish_many(events))

    def ack(self, consumer: str, event_id: int) -> None:
        """Commit ``consumer``'s cursor at ``event_id`` (never backwards)."""
        self._check_not_in_tx()
        self._call(self._bus.ack(consumer, event_id))

    def unregister(self, consumer: str) -> int | None:
        """Delete ``consumer``'s cursor; the cursor it had, or None if unknown (see
        Bus.unregister)."""
        self._check_not_in_tx()
        return self._call(self._bus.unregister(consumer))

    def events(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Stored events with ``id > since_id`` in id order (see Bus.events)."""
        return self._call(
            self._bus.events(since_id=since_id, types=types, run_id=run_id, limit=limit)
        )

    def get(self, event_id: int) -> Event | None:
        """The event with this id, or None."""
        return self._call(self._bus.get(event_id))

    def last_id(self) -> int:
        """The last id ever assigned (0 for an empty bus)."""
        return self._call(self._bus.last_id())

    def unfinished_runs(self, agent: str) -> list[str]:
        """Ids of ``agent``'s runs without an outcome (see Bus.unfinished_runs)."""
        return self._call(self._bus.unfinished_runs(agent))

    def cursors(self) -> list[CursorInfo]:
        """Registered consumers with cursor and lag."""
        return self._call(self._bus.cursors())

    def prune(self, *, dry_run: bool = False, max_age_s: float | None = None) -> PruneReport:
        """Delete acknowledged events (see Bus.prune)."""
        return self._call(self._bus.prune(dry_run=dry_run, max_age_s=max_age_s))

    def subscribe(
        self,
        consumer: str,
        types: str | Iterable[str] = ("*",),
        timeout: float | None = None,
        *,
        batch_size: int = 100,
        partition: tuple[int, int] | None = None,
    ) -> Iterator[Event]:
        """Events for ``consumer`` after its committed cursor, in id order, waiting for new
        ones; with ``timeout``, the iterator ends after that many seconds without events.
        ``partition=(i, n)``: only ids with ``id % n == i``. Delivered events move the cursor
        only with :meth:`ack`; skipped ones (other types or partitions) are committed past
        while the iterator waits idle with every delivered event acked (see Bus.subscribe)."""
        sub = self._call(
            self._bus.open_subscription(consumer, types, batch_size=batch_size, partition=partition)
        )
        return self._iterate(sub, timeout)

    def follow(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] = ("*",),
        timeout: float | None = None,
        batch_size: int = 100,
    ) -> Iterator[Event]:
        """Events after ``since_id`` without a consumer cursor (writes nothing), waiting for
        new ones; with ``timeout``, ends after that many seconds without events."""
        sub = self._call(
            self._bus.open_subscription(None, types, batch_size=batch_size, since_id=since_id)
        )
        return self._iterate(sub, timeout)

    def _iterate(self, sub: Any, timeout: float | None) -> Iterator[Event]:
        while True:
            batch = self._call(sub.next_batch(timeout))
            if not batch:
                return
            yield from batch

    def transaction(self) -> SyncTransaction:
        """``with bus.transaction() as tx:`` — publish and ack atomically (see Bus.transaction)."""
        self._check_not_in_tx()
        return SyncTransaction(self, self._bus.transaction())


class SyncTransaction:
    """Blocking view of a :class:`~loopbus.bus.sqlite.core.Transaction`."""

    def __init__(self, owner: SyncBus, tx: Transaction) -> None:
        self._owner = owner
        self._tx = tx

    def __enter__(self) -> SyncTransaction:
        self._owner._call(self._tx.__aenter__())
        self._owner._tx_threads.add(threading.get_ident())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._tx_threads.discard(threading.get_ident())
        self._owner._call(self._tx.__aexit__(exc_type, exc, tb))

    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        agent: str = "cli",
        run_id: str | None = None,
        caused_by: int | None = None,
    ) -> int:
        """Publish inside the transaction; return the event id."""
        return self._owner._call(
            self._tx.publish(event_type, payload, agent=agent, run_id=run_id, caused_by=caused_by)
        )

    def publish_many(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[int]:
        """Publish several events inside the transaction."""
        return self._owner._call(self._tx.publish_many(list(events)))

    def ack(self, consumer: str, event_id: int) -> None:
        """Move ``consumer``'s cursor as part of the transaction."""
        self._owner._call(self._tx.ack(consumer, event_id))


__all__ = ["SyncBus", "SyncTransaction"]
