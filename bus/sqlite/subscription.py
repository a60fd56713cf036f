"""Subscriptions: a read position plus a type filter, delivering batches of events.

A waiting subscription re-queries ``id > position`` whenever the bus's listener generation
moves (local commit or a doorbell datagram from another process), and every ``safety_poll_s``
when SQLite's ``data_version`` says another connection committed meanwhile (a cheap check on
the loop thread); the doorbell is only a hint.

Read-ahead: when a batch comes back full (a backlog), the next batch is fetched on the reader
thread while the caller handles this one and commits its ack, so a catching-up consumer does
not wait for each fetch. It changes nothing the caller sees: the
same events in the same order, and the committed cursor moves with ``ack``.

Skipping what a consumer does not subscribe to: a filtered fetch (type globs, or an id
partition) scans up to the head of the bus, so the subscription's position passes events it
never delivers. Cursors only move with ``ack`` of delivered ids, so without more a consumer of
a rare type would keep its committed cursor at its last matching event: its lag would count
every later event and ``prune`` could never pass it. So when a subscription is idle (a fetch
found nothing), it commits its scanned position as the cursor — but only once every event it
delivered is acknowledged (the UPDATE requires ``cursor >= last delivered id``, see
:func:`loopbus.bus.sqlite.sqlops.advance_cursor`), so at-least-once delivery holds. That write happens at most
once per :data:`ADVANCE_INTERVAL_S` per subscription, and only when the position or the
consumer's acks changed since the last try.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from loopbus.bus.errors import BusError
from loopbus.bus.events import Event, events_from_rows
from loopbus.bus.sqlite import sqlops

if TYPE_CHECKING:
    from loopbus.bus.sqlite.core import Bus

# The least time between two scanned-position commits of one subscription (each is a write
# transaction): an idle filtered consumer reaches lag 0 within this long.
ADVANCE_INTERVAL_S = 1.0


def partition_filter(partition: tuple[int, int] | None) -> tuple[str, list[int]]:
    """SQL (`` AND ...``) and parameters selecting the ids of partition ``(index, count)``."""
    if partition is None:
        return "", []
    try:
        index, count = (int(v) for v in partition)
    except (TypeError, ValueError):
        raise BusError(f"partition must be (index, count), not {partition!r}") from None
    if count < 1 or not 0 <= index < count:
        raise BusError(f"partition {partition!r}: need 0 <= index < count")
    if count == 1:
        return "", []
    return " AND id % ? = ?", [count, index]


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
        partition: tuple[int, int] | None = None,
    ) -> None:
        self.bus = bus
        self.consumer = consumer
        self.batch_size = batch_size
        self.position = since_id
        self._filter_sql, self._params = sqlops.type_filter(types)
        part_sql, part_params = partition_filter(partition)
        self._filter_sql += part_sql
        self._params = [*self._params, *part_params]
        # The last id delivered (or the cursor at start), the committed cursor as last seen,
        # and what the last scanned-position commit tried: (position, bus ack count), time.
        self._delivered = since_id
        self._committed = since_id
        self._advance_key: tuple[int, int] | None = None
        self._advance_at = 0.0
        # A fetch already running for the batch after `position` (see the module docstring),
        # and the listener generation taken before it started.
        self._ahead: _ReadAhead | None = None
        self._ahead_generation = 0
        # The file's data_version taken before the last fetch (see next_batch).
        self._version: int | None = None

    async def start(self) -> None:
        """Bind the wake-up socket; register the consumer and read its committed cursor."""
        # Bind before the first query: an event committed after it rings us.
        self.bus._listener.bind()
        if self.consumer is not None:
            self.position = await self.bus._enqueue(sqlops.REGISTER, self.consumer)
            self._delivered = self._committed = self.position

    @property
    def scanned_id(self) -> int:
        """The id up to which this subscription has looked: every event at or below it was
        delivered or does not match the subscription (types, partition)."""
        return self.position

    async def commit_scanned(self) -> bool:
        """Commit the scanned position as the consumer's cursor if every delivered event is
        acknowledged; return whether the cursor is now at the scanned position.

        Never moves the cursor past a delivered event that was not acknowledged.
        """
        if self.consumer is None:
            return False
        bus = self.bus
        self._advance_key = (self.position, bus._acks)
        self._advance_at = bus._loop.time()
        if self._committed >= self.position:
            return True
        self._committed = await bus._enqueue(
            sqlops.ADVANCE, (self.consumer, self._delivered, self.position)
        )
        return self._committed >= self.position

    def _may_advance(self) -> bool:
        bus = self.bus
        return (
            self.consumer is not None
            # Skipped something (an unfiltered subscription never does: its acks suffice).
            and self.position > max(self._committed, self._delivered)
            and self._advance_key != (self.position, bus._acks)
            and not bus.closed
            # A transaction owns the writer (maybe this very caller's): try again later.
            and not bus._exclusive
            and not bus._exclusive_waiters
        )

    async def next_batch(self, timeout: float | None) -> list[Event]:
        """The next events after the position (at least one), waiting up to ``timeout``
        seconds (forever with None); an empty list on timeout."""
        bus = self.bus
        listener = bus._listener
        deadline = None if timeout is None else bus._loop.time() + timeout
        quiet = False  # the last wait timed out and nothing was committed anywhere since
        generation = listener.generation  # what the last fetch saw (a quiet pass keeps it)
        while True:
            ahead, self._ahead = self._ahead, None
            if ahead is not None and not bus.closed:
                generation = self._ahead_generation
                bus._kicks.pop(self, None)
                ahead.kick()  # no-op when a commit already started it
                rows, self.position = await bus._rresult(ahead.future)
                # The reader thread only fetched the rows: building the events there too would
                # hold the GIL past the commit's fsync that the fetch overlaps (measured: the
                # ack then ends ~90 us later, more than building them here costs).
                events = events_from_rows(rows)
            elif quiet:
                events = []
            else:
                generation = listener.generation
                self._version = bus._inline.data_version()
                events, self.position = await bus._rcall(
                    sqlops.fetch_after,
                    self.position,
                    self._filter_sql,
                    self._params,
                    self.batch_size,
                )
            if events:
                if len(events) == self.batch_size:
                    self._read_ahead()
                self._delivered = events[-1].id
                return events
            wait_s = bus.safety_poll_s
            if self._may_advance():
                wait_until = self._advance_at + ADVANCE_INTERVAL_S
                now = bus._loop.time()
                if now >= wait_until:
                    await self.commit_scanned()
                    quiet = False
                    continue  # re-check: events may have come meanwhile
                wait_s = min(wait_s, wait_until - now)
            if deadline is not None:
                remaining = deadline - bus._loop.time()
                if remaining <= 0:
                    return []
                wait_s = min(wait_s, remaining)
            woken = await listener.wait(generation, wait_s)
            # The safety poll: SQLite's data_version (read on the loop thread, no thread hop)
            # moves with every commit of another connection or process, and this bus's own
            # commits move the generation; when neither did, the fetch would find nothing.
            quiet = (
                not woken
                and self._version is not None
                and bus._inline.data_version() == self._version
            )

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
        # The next commit starts it just before its COMMIT (loopbus.bus.sqlite.commit's _kick_read_aheads),
        # so the fetch runs while that commit waits for the disk (with the GIL released)
        # instead of competing with the commit's own work; next_batch starts it itself if no
        # commit came first.
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
