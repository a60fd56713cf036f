"""The reading half of :class:`loopbus.bus.sqlite.core.Bus`: stored events, cursors, subscriptions.

Reads run on the bus's second connection (its own thread), so they never wait behind an
fsync; subscriptions are :class:`loopbus.bus.sqlite.subscription.Subscription` objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, cast

from loopbus.bus.errors import BusError
from loopbus.bus.events import CursorInfo, Event, check_id, check_name
from loopbus.bus.sqlite import sqlops
from loopbus.bus.sqlite.subscription import Subscription, partition_filter

if TYPE_CHECKING:
    from loopbus.bus.sqlite.core import Bus


class ReadAPI:
    """Mixin of :class:`loopbus.bus.sqlite.core.Bus` with its read methods."""

    if TYPE_CHECKING:

        async def _rcall(self, fn: Any, *args: Any) -> Any: ...

        def _check_usable(self) -> None: ...

    def _as_bus(self) -> Bus:
        # ReadAPI exists only as a part of Bus (it keeps core.py short); subscriptions get the Bus.
        return cast("Bus", self)

    async def events(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Stored events with ``id > since_id`` in id order, filtered by type globs / run."""
        check_id("since_id", since_id)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise BusError(f"limit must be a non-negative integer, not {limit!r}")
        return await self._rcall(sqlops.select_events, since_id, types, run_id, limit)

    async def get(self, event_id: int) -> Event | None:
        """The event with this id, or None (never published or pruned)."""
        return await self._rcall(sqlops.get_event, check_id("event id", event_id))

    async def last_id(self) -> int:
        """The last id ever assigned (0 for an empty bus); pruning never lowers it."""
        return await self._rcall(sqlops.head_id)

    async def unfinished_runs(self, agent: str) -> list[str]:
        """Ids of ``agent``'s runs that have a ``run.task`` but no ``run.outcome`` event
        (the agent loop's protocol, see :mod:`loopbus.agents.run.state`), oldest first; indexed."""
        check_name("agent", agent)
        return await self._rcall(sqlops.unfinished_runs, agent)

    async def cursors(self) -> list[CursorInfo]:
        """Registered consumers with their cursor and lag (events stored after the cursor)."""
        return await self._rcall(sqlops.list_cursors)

    def subscribe(
        self,
        consumer: str,
        types: str | Iterable[str] = ("*",),
        *,
        batch_size: int = 100,
        partition: tuple[int, int] | None = None,
    ) -> AsyncIterator[Event]:
        """Events for ``consumer`` in id order, starting after its committed cursor, waiting
        for new ones (wake-up doorbell, safety poll). ``types`` are fnmatch globs on
        event_type (``file.*``, ``*``); ``partition=(i, n)`` keeps only ids with
        ``id % n == i`` (one of n processes sharing a stream).

        Delivered events move the cursor only with :meth:`ack`. Events the subscription skips
        (other types, other partitions) are committed past by the iterator itself while it
        waits idle, once every delivered event is acknowledged (see :mod:`loopbus.bus.sqlite.subscription`),
        so a selective consumer does not pin retention and reaches lag 0 when caught up.

        The consumer is registered (cursor 0 when new) so prune keeps its events.
        """
        self._check_usable()
        check_name("consumer", consumer)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BusError(f"batch_size must be a positive integer, not {batch_size!r}")
        sqlops.type_filter(types)  # validate now, not at the first iteration
        partition_filter(partition)
        return self._iterate(
            Subscription(self._as_bus(), consumer, types, batch_size, partition=partition)
        )

    def follow(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] = ("*",),
        batch_size: int = 100,
    ) -> AsyncIterator[Event]:
        """Like :meth:`subscribe` but without a consumer: events after ``since_id``, waiting
        for new ones, and nothing is written (no cursor, so prune is not held back). For
        watching the bus (``loopbus tail --follow``)."""
        self._check_usable()
        check_id("since_id", since_id)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BusError(f"batch_size must be a positive integer, not {batch_size!r}")
        sqlops.type_filter(types)
        return self._iterate(
            Subscription(self._as_bus(), None, types, batch_size, since_id=since_id)
        )

    async def _iterate(self, sub: Subscription) -> AsyncIterator[Event]:
        await sub.start()
        while True:
            for event in await sub.next_batch(None):
                yield event

    async def open_subscription(
        self,
        consumer: str | None,
        types: str | Iterable[str] = ("*",),
        *,
        batch_size: int = 100,
        since_id: int = 0,
        partition: tuple[int, int] | None = None,
    ) -> Subscription:
        """A started :class:`Subscription` (batch-level API used by SyncBus). With
        ``consumer=None`` it is a cursor-less follow from ``since_id``."""
        self._check_usable()
        if consumer is not None:
            check_name("consumer", consumer)
        check_id("since_id", since_id)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BusError(f"batch_size must be a positive integer, not {batch_size!r}")
        sub = Subscription(
            self._as_bus(), consumer, types, batch_size, since_id=since_id, partition=partition
        )
        await sub.start()
        return sub


__all__ = ["ReadAPI"]
