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
from typing import TYPE_CHECKING, Any

from bus import sqlops
from bus.events import Event

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
        self._ahead: asyncio.Future[Any] | None = None
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
            if ahead is not None:
                generation = self._ahead_generation
                events, self.position = await bus._rresult(ahead)
            else:
                generation = listener.generation
                events, self.position = await bus._rcall(
                    sqlops.fetch_after,
                    self.position,
                    self._filter_sql,
                    self._params,
                    self.batch_size,
                )
            if events:
                if len(events) == self.batch_size and not bus.closed:
                    self._read_ahead()
                return events
            wait_s = bus.safety_poll_s
            if deadline is not None:
                remaining = deadline - bus._loop.time()
                if remaining <= 0:
                    return []
                wait_s = min(wait_s, remaining)
            await listener.wait(generation, wait_s)

    def _read_ahead(self) -> None:
        # Generation first, as in next_batch: a commit during the fetch is not missed.
        self._ahead_generation = self.bus._listener.generation
        self._ahead = self.bus._rsubmit(
            sqlops.fetch_after, self.position, self._filter_sql, self._params, self.batch_size
        )
