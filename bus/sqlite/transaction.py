"""Transactions: publish and ack in one BEGIN IMMEDIATE transaction (see Bus.transaction).

Committing a consumer's cursor in the same transaction as the events it publishes makes its
effects inside the bus exactly-once: either both are committed or neither is.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from loopbus.bus.errors import BusError
from loopbus.bus.events import NewEvent, check_id, check_name, prepare_row
from loopbus.bus.sqlite import sqlops

if TYPE_CHECKING:
    from loopbus.bus.sqlite.core import Bus

# The bus whose transaction the current task is inside (publishing through the bus there
# would wait for the transaction itself).
CURRENT_TX: contextvars.ContextVar[Bus | None] = contextvars.ContextVar("loopbus_tx", default=None)


class Transaction:
    """One BEGIN IMMEDIATE transaction on the bus's writer (see :meth:`Bus.transaction`)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._published = 0
        self._open = False
        self._token: contextvars.Token[Bus | None] | None = None

    async def __aenter__(self) -> Transaction:
        bus = self._bus
        await bus._acquire_exclusive()
        try:
            await bus._wcall(sqlops.begin_immediate, bus._wconn, bus._busy_ms)
        except BaseException:
            bus._release_exclusive()
            raise
        self._open = True
        self._token = CURRENT_TX.set(bus)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bus = self._bus
        if self._token is not None:
            # SyncBus enters and exits in different tasks (contexts): nothing to reset there.
            with contextlib.suppress(ValueError):
                CURRENT_TX.reset(self._token)
        self._open = False
        committed = False
        try:
            if exc_type is None:
                await bus._wcall(self._commit, self._published)
                committed = True
            else:
                await bus._wcall(self._rollback)
        finally:
            bus._release_exclusive()
            if committed and self._published:
                bus._listener.notify()

    def _commit(self, published: int) -> None:
        conn = self._bus._wconn
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        stats = self._bus.stats
        stats.transactions += 1
        stats.events += published
        if published:
            self._bus._doorbell.ring()

    def _rollback(self) -> None:
        conn = self._bus._wconn
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _check_open(self) -> None:
        if not self._open:
            raise BusError("the transaction is finished; open a new one with bus.transaction()")

    async def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        agent: str = "cli",
        run_id: str | None = None,
        caused_by: int | None = None,
    ) -> int:
        """Publish inside the transaction; the id is final, visible to others at commit."""
        self._check_open()
        bus = self._bus
        row = prepare_row(event_type, payload, agent, run_id, caused_by, bus.max_payload_bytes)
        ids = await bus._wcall(sqlops.apply_ops, bus._wconn, [(sqlops.PUBLISH, row)])
        self._published += 1
        return ids[0]

    async def publish_many(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[int]:
        """Publish several events inside the transaction; their ids in order."""
        self._check_open()
        bus = self._bus
        rows = bus._rows(events)
        if not rows:
            return []
        result = await bus._wcall(sqlops.apply_ops, bus._wconn, [(sqlops.PUBLISH_MANY, rows)])
        self._published += len(rows)
        return result[0]

    async def ack(self, consumer: str, event_id: int) -> None:
        """Move ``consumer``'s cursor as part of the transaction."""
        self._check_open()
        check_name("consumer", consumer)
        check_id("event id", event_id)
        bus = self._bus
        error = await bus._wcall(sqlops.ack_cursor, bus._wconn, consumer, event_id)
        bus._acks += 1
        if error is not None:
            raise error
