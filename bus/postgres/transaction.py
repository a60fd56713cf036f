"""Transactions on a PostgreSQL bus: publishes and acks that commit together or not at all
(the consumer's cursor moves in the same transaction as the events it publishes, which makes
its effects inside the bus exactly-once)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from loopbus.bus.errors import BusClosed, BusError
from loopbus.bus.events import NewEvent, check_id, check_name, prepare_row

if TYPE_CHECKING:
    from loopbus.bus.postgres.store import PgBus


class PgTransaction:
    """``with bus.transaction() as tx:`` on a :class:`PgBus`: publishes and acks commit
    together or not at all (rolled back when the block raises)."""

    def __init__(self, bus: PgBus) -> None:
        self._bus = bus
        self._open = False
        self._published = 0

    def __enter__(self) -> PgTransaction:
        bus = self._bus
        bus._wlock.acquire()
        if bus._closed:
            bus._wlock.release()
            raise BusClosed(f"the bus {bus.target} is closed")
        self._open = True
        bus._tx_threads.add(threading.get_ident())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bus = self._bus
        bus._tx_threads.discard(threading.get_ident())
        self._open = False
        conn = bus._wconn
        try:
            if exc_type is None:
                try:
                    conn.commit()
                except Exception as err:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    raise bus._wrap(err) from err
                bus.stats.transactions += 1
            else:
                with contextlib.suppress(Exception):
                    conn.rollback()
        finally:
            bus._wlock.release()

    def _run(self, fn: Any, *args: Any) -> Any:
        if not self._open:
            raise BusError("the transaction is finished; open a new one with bus.transaction()")
        try:
            return fn(self._bus._wconn, *args)
        except Exception as exc:
            wrapped = self._bus._wrap(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        agent: str = "cli",
        run_id: str | None = None,
        caused_by: int | None = None,
    ) -> int:
        """Publish inside the transaction; the id is final, visible to others at commit."""
        bus = self._bus
        row = prepare_row(event_type, payload, agent, run_id, caused_by, bus.max_payload_bytes)
        return self._run(bus._insert, [row])[0]

    def publish_many(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[int]:
        """Publish several events inside the transaction; their ids in order."""
        rows = self._bus._rows(events)
        return self._run(self._bus._insert, rows) if rows else []

    def ack(self, consumer: str, event_id: int) -> None:
        """Move ``consumer``'s cursor as part of the transaction."""
        check_name("consumer", consumer)
        check_id("event id", event_id)
        self._run(self._bus._ack, consumer, event_id)


__all__ = ["PgTransaction"]
