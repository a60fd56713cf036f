"""Subscriptions: a read position plus a type filter, delivering batches of events.

A waiting subscription re-queries ``id > position`` whenever the bus's listener generation
moves (local commit or a doorbell datagram from another process) and at least every
``safety_poll_s``; the doorbell is only a hint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

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
            generation = listener.generation
            events, self.position = await bus._rcall(
                sqlops.fetch_after, self.position, self._filter_sql, self._params, self.batch_size
            )
            if events:
                return events
            wait_s = bus.safety_poll_s
            if deadline is not None:
                remaining = deadline - bus._loop.time()
                if remaining <= 0:
                    return []
                wait_s = min(wait_s, remaining)
            await listener.wait(generation, wait_s)
