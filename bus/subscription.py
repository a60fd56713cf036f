"""Subscriptions: a read position plus a type filter, delivering batches of events.

A waiting subscription re-queries ``id > position`` whenever the bus's listener generation
moves (local commit or a doorbell datagram from another process) and at least every
``safety_poll_s``; the doorbell is only a hint.

Read-ahead: when a batch comes back full (a backlog), the next batch is fetched on the reader
thread while the caller handles this one (and commits its ack on the writer thread), so a
catching-up consumer does not wait for each fetch. It changes nothing the caller sees: the
same events in the same order, and the committed cursor still moves only with ``ack``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from bus import sqlops
from bus.events import Event, events_from_rows

if TYPE_CHECKING:
    from bus.core import Bus


class Subscription:
    """A read position and type filter; delivers batches of events. With a consumer, the
    position starts at its committed cursor; without one (a follow), at ``since_id``."""

    def __init__(
        self,
        bus: Bus,
        consumer: str | None,
        types: str | Iterable[str],
        batch_size: int,
        *,
        since_id: int = 0,
    ) -> None:
        self.bus = bus
        self.consumer = consumer
        self.batch_size = batch_size
        self.position = since_id
        self._filter_sql, self._params = sqlops.type_filter(types)
        # A fetch already running for the batch after `position` (see the module docstring),
        # and the listener generation taken before it started.
        self._ahead: _ReadAhead | None = None
        self._ahead_generation = 0

    async def start(self) -> None:
        """Bind the wake-up socket; register the consumer and read its committed cursor."""
        # Bind before the first query: an event committed after it rings us.
        self.bus._listener.bind()
        if self.consumer is not None:
            self.position = await self.bus._enqueue(sqlops.REGISTER, self.consumer)

    async def next_batch(self, timeout: float | None) -> list[Event]:
        """The next events after the position (at least one), waiting up to ``timeout``
        seconds (forever with None); an empty list on timeout."""
        bus = self.bus
        listener = bus._listener
        deadline = None if timeout is None else bus._loop.time() + timeout
        while True:
            ahead, self._ahead = self._ahead, None
            if ahead is not None and not bus.closed:
                generation = self._ahead_generation
                bus._kicks.pop(self, None)
                ahead.kick()  # no-op when the writer already started it
                rows, self.position = await bus._rresult(ahead.future)
            else:
                generation = listener.generation
                rows, self.position = await bus._rcall(
                    sqlops.fetch_rows_after,
                    self.position,
                    self._filter_sql,
                    self._params,
                    self.batch_size,
                )
            if rows:
                if len(rows) == self.batch_size:
                    self._read_ahead()
                # Events are built here rather than on the reader thread: that keeps the
                # reader's GIL use short (the fetch mostly runs inside SQLite) when it
                # overlaps the caller's own work and commits.
                return events_from_rows(rows)
            wait_s = bus.safety_poll_s
            if deadline is not None:
                remaining = deadline - bus._loop.time()
                if remaining <= 0:
                    return []
                wait_s = min(wait_s, remaining)
            await listener.wait(generation, wait_s)

    def _read_ahead(self) -> None:
        # Generation first, as in next_batch: a commit during the fetch is not missed.
        bus = self.bus
        self._ahead_generation = bus._listener.generation
        ahead = _ReadAhead(
            bus,
            partial(
                sqlops.fetch_rows_after,
                bus._rconn,
                self.position,
                self._filter_sql,
                self._params,
                self.batch_size,
            ),
        )
        self._ahead = ahead
        # The writer thread starts it just before its next COMMIT (see Bus._batch_job), so
        # the fetch runs while that commit waits for the disk instead of competing with the
        # commit's own work for the GIL; next_batch starts it itself if no commit came first.
        bus._kicks[self] = ahead.kick


class _ReadAhead:
    """A fetch for the reader thread that either thread may start, exactly once."""

    __slots__ = ("_bus", "_job", "_started", "future")

    def __init__(self, bus: Bus, job: Any) -> None:
        self._bus = bus
        self._job = job
        self._started = False
        self.future: asyncio.Future[Any] = bus._loop.create_future()
        # Nobody may await it (an abandoned subscription): never log its error as unretrieved.
        self.future.add_done_callback(_retrieve)

    def kick(self) -> None:
        """Queue the fetch on the reader thread unless that was done (thread-safe)."""
        with self._bus._kick_lock:
            if self._started:
                return
            self._started = True
        self._bus._reader._tx.put_nowait((self.future, self._job))


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
