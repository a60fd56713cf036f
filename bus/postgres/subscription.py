"""Subscriptions on a PostgreSQL bus: LISTEN/NOTIFY as a wake-up hint, a safety poll.

A :class:`Waker` thread per bus holds a LISTEN connection and bumps a generation counter on
every notification (or reconnects after losing it). A waiting subscription re-queries
``id > position`` when the generation moves, and every ``safety_poll_s`` regardless: a
notification is only a hint (it may be lost with a connection), the query is the truth.

Skipped events (other types or partitions) are committed past while idle, once every
delivered event is acknowledged, as on SQLite (see :mod:`loopbus.bus.sqlite.subscription`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from loopbus.bus.errors import BusError
from loopbus.bus.events import Event
from loopbus.bus.postgres.connect import PgTarget, connect
from loopbus.bus.postgres.sqlbits import partition_filter, type_filter

if TYPE_CHECKING:
    from loopbus.bus.postgres.store import PgBus

ADVANCE_INTERVAL_S = 1.0


class Waker:
    """A LISTEN connection on a daemon thread; :meth:`wait` returns when a notification
    arrives after the generation the caller saw."""

    def __init__(self, target: PgTarget) -> None:
        self.target = target
        self.generation = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._conn: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopbus-pg-listen", daemon=True)
        self._thread.start()
        self._ready.wait(10)  # LISTEN before the first query: no commit after it is missed

    def _bump(self) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._conn = connect(self.target, autocommit=True)
                self._conn.execute(f'LISTEN "{self.target.channel}"')
                self._ready.set()
                self._bump()  # (re)connected: whatever happened meanwhile, look again
                while not self._stop.is_set():
                    for _ in self._conn.notifies(timeout=0.5, stop_after=1):
                        self._bump()
            except Exception:
                # Lost the connection (or the server restarts): the safety poll covers the
                # gap; retry shortly.
                self._ready.set()
                if self._stop.wait(0.5):
                    return
            finally:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None

    def wait(self, generation: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the generation to move past ``generation``."""
        with self._cond:
            return self._cond.wait_for(lambda: self.generation != generation, timeout)

    def close(self) -> None:
        """Stop the thread: it notices within half a second and closes its connection.

        Not joined: closing a bus (Ctrl-C on ``tail --follow``) must not wait for that.
        """
        self._stop.set()


class PgSubscription:
    """A read position and filters over a :class:`PgBus` (with a consumer: its cursor)."""

    def __init__(
        self,
        bus: PgBus,
        consumer: str | None,
        types: str | Iterable[str],
        batch_size: int,
        *,
        since_id: int = 0,
        partition: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BusError(f"batch_size must be a positive integer, not {batch_size!r}")
        self.bus = bus
        self.consumer = consumer
        self.batch_size = batch_size
        filter_sql, params = type_filter(types)
        part_sql, part_params = partition_filter(partition)
        self._filter_sql = filter_sql + part_sql
        self._params: list[Any] = [*params, *part_params]
        self.position = since_id
        self._delivered = since_id
        self._committed = since_id
        self._advance_at = 0.0
        self._waker = bus._ensure_waker()
        if consumer is not None:
            self.position = bus.register(consumer)
            self._delivered = self._committed = self.position

    def iterate(self, timeout: float | None) -> Iterator[Event]:
        """Yield events; with ``timeout``, stop after that long without one."""
        while True:
            batch = self.next_batch(timeout)
            if not batch:
                return
            yield from batch

    def next_batch(self, timeout: float | None) -> list[Event]:
        """The next events after the position (at least one), or [] after ``timeout`` s."""
        bus = self.bus
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            generation = self._waker.generation
            events, self.position = bus.fetch_after(
                self.position, self._filter_sql, self._params, self.batch_size
            )
            if events:
                self._delivered = events[-1].id
                return events
            wait_s = bus.safety_poll_s
            if self.consumer is not None and self.position > max(self._committed, self._delivered):
                now = time.monotonic()
                if now >= self._advance_at + ADVANCE_INTERVAL_S:
                    self._advance_at = now
                    self._committed = bus.advance(self.consumer, self._delivered, self.position)
                    continue
                wait_s = min(wait_s, self._advance_at + ADVANCE_INTERVAL_S - now)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                wait_s = min(wait_s, remaining)
            self._waker.wait(generation, wait_s)


__all__ = ["PgSubscription", "Waker"]
