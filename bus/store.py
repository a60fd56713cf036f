"""The storage interface under the bus: the :class:`Store` protocol and :func:`open`.

Agents, the CLI and the tests talk to a *store*: the blocking bus API that
:class:`bus.SyncBus` (SQLite, one file, one host) and :class:`loopbus.bus.postgres.store.PgBus`
(PostgreSQL, one server, many hosts) both provide. A bus is addressed by a URL:

* ``path/to/bus.db`` or ``sqlite:///abs/path/bus.db`` (``sqlite://`` + the path): SQLite;
* ``postgresql://user@host:5432/db?schema=NAME`` (or ``postgres://``): PostgreSQL, the bus's
  tables in schema ``NAME`` (default ``public``), created on first open.

``--bus`` and ``$LOOPBUS_BUS`` take either form. What every backend guarantees is the
contract suite in ``tests/bus/contract/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from loopbus.bus.errors import BusError

if TYPE_CHECKING:
    from loopbus.bus.events import CursorInfo, Event, NewEvent, PruneReport
    from loopbus.bus.sqlite.readonly import QueryResult

_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SQLITE_PREFIX = "sqlite://"


class StoreTransaction(Protocol):
    """Publishes and acks that commit together or not at all (``with store.transaction()``)."""

    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        agent: str = "cli",
        run_id: str | None = None,
        caused_by: int | None = None,
    ) -> int: ...

    def publish_many(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[int]: ...

    def ack(self, consumer: str, event_id: int) -> None: ...


class AppendMixin:
    """``Store.append`` for a backend, from its ``transaction()`` (one implementation)."""

    if TYPE_CHECKING:

        def transaction(self) -> AbstractContextManager[Any]: ...

    def append(
        self,
        events: Iterable[NewEvent | Mapping[str, Any]],
        *,
        ack: tuple[str, int] | None = None,
    ) -> list[int]:
        """Publish ``events`` and, in the same transaction, ack ``(consumer, event_id)``."""
        with self.transaction() as tx:
            ids = tx.publish_many(events)
            if ack is not None:
                tx.ack(*ack)
        return ids


@runtime_checkable
class Store(Protocol):
    """What a bus backend provides (blocking; safe to share between threads).

    Guarantees (checked by ``tests/bus/contract``):

    * **append**: ``publish``/``publish_many`` return ids after a durable commit; ids grow in
      commit order (a reader that saw id N never later finds a new id below N), are never
      reused (not even after ``prune``), and one ``publish_many`` gets consecutive ids.
      ``transaction()`` appends and acks atomically (exactly-once effects inside the bus).
    * **read after id**: ``events(since_id=, types=, run_id=, limit=)`` in id order, with
      fnmatch globs on the type; ``get``; ``last_id`` is the head (never lowered).
    * **cursors**: ``ack`` never moves a cursor backwards and refuses ids above the head;
      ``cursors()`` lists consumers with their lag; ``unregister`` drops one.
    * **leases**: ``lease(name)`` holds ``name`` for one live process at a time (LeaseHeld
      for the next, naming the holder); a killed holder frees it at once (:mod:`loopbus.bus.lease`).
    * **retention**: ``prune`` deletes what every registered consumer acknowledged (with
      ``max_age_s``, older events too, naming the consumers it overtakes).
    * **open runs**: ``unfinished_runs(agent)``: runs with a ``run.task``, no ``run.outcome``.
    * **wake hint**: ``subscribe``/``follow`` wait for new events, woken by the backend's hint
      (a datagram doorbell, LISTEN/NOTIFY) and re-checking every ``safety_poll_s``.
    * **read-only query**: ``query`` (and :func:`query` by URL) runs one statement that cannot
      change the bus, with a timeout; the views of migration 5 (``runs``, ``tool_calls``, ...) exist everywhere.
    """

    @property
    def max_payload_bytes(self) -> int:
        """The payload limit (bytes of JSON) this bus was opened with."""
        ...

    @property
    def path(self) -> Any: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        agent: str = "cli",
        run_id: str | None = None,
        caused_by: int | None = None,
    ) -> int: ...

    def publish_many(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[int]: ...

    def transaction(self) -> AbstractContextManager[Any]: ...

    def append(
        self,
        events: Iterable[NewEvent | Mapping[str, Any]],
        *,
        ack: tuple[str, int] | None = None,
    ) -> list[int]: ...

    def lease(self, name: str) -> Any: ...

    def query(
        self, sql: str, params: Any = (), *, timeout_s: float | None = None
    ) -> QueryResult: ...

    def lease_holder(self, name: str) -> str | None: ...

    def check_writable(self) -> None: ...

    def ack(self, consumer: str, event_id: int) -> None: ...

    def unregister(self, consumer: str) -> int | None: ...

    def events(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[Event]: ...

    def get(self, event_id: int) -> Event | None: ...

    def last_id(self) -> int: ...

    def cursors(self) -> list[CursorInfo]: ...

    def prune(self, *, dry_run: bool = False, max_age_s: float | None = None) -> PruneReport: ...

    def unfinished_runs(self, agent: str) -> list[str]: ...

    def subscribe(
        self,
        consumer: str,
        types: str | Iterable[str] = ("*",),
        timeout: float | None = None,
        *,
        batch_size: int = 100,
        partition: tuple[int, int] | None = None,
    ) -> Iterator[Event]: ...

    def follow(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] = ("*",),
        timeout: float | None = None,
        batch_size: int = 100,
    ) -> Iterator[Event]: ...

    def close(self) -> None: ...


def backend_of(target: str | os.PathLike[str]) -> str:
    """``"sqlite"`` or ``"postgres"`` for a bus address (a path or a URL)."""
    if isinstance(target, os.PathLike):
        return "sqlite"
    match = _URL_RE.match(target)
    if match is None:
        return "sqlite"
    scheme = match.group(1).lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgres"
    raise BusError(
        f"unknown bus URL scheme {scheme!r} in {target!r}: use a file path, "
        "sqlite:///path/to/bus.db or postgresql://user@host/db"
    )


def sqlite_path(target: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """The file of a SQLite bus address (``sqlite://PATH`` -> ``PATH``; a path as is)."""
    if isinstance(target, str) and target[:9].lower() == SQLITE_PREFIX:
        path = target[len(SQLITE_PREFIX) :]
        if not path:
            raise BusError(f"no file in the bus URL {target!r}: use sqlite:///path/to/bus.db")
        return path
    return target


def is_url(target: str | os.PathLike[str] | None) -> bool:
    """Whether ``target`` is a URL (``scheme://...``) rather than a plain file path."""
    return isinstance(target, str) and _URL_RE.match(target) is not None


def open(target: str | os.PathLike[str] | None = None, **options: Any) -> Store:  # noqa: A001
    """Open the bus at ``target`` (a path or URL; default ``$LOOPBUS_BUS``, else
    ``./loopbus.db``) with the backend its scheme names. ``options`` are SyncBus's
    (``synchronous``, ``max_payload_bytes``, ``create``, ``safety_poll_s``,
    ``busy_timeout_s``); every backend takes them."""
    if target is None:
        target = os.environ.get("LOOPBUS_BUS") or "loopbus.db"
    if backend_of(target) == "postgres":
        from loopbus.bus.postgres.store import PgBus

        return PgBus(str(target), **options)
    from loopbus.bus.sqlite.sync import SyncBus

    return SyncBus(sqlite_path(target), **options)


def query(
    target: str | os.PathLike[str] | None,
    sql: str,
    params: Sequence[Any] | dict[str, Any] = (),
    *,
    timeout_s: float | None = None,
    interrupt: Any = None,
) -> QueryResult:
    """Run one read-only SQL statement on the bus at ``target`` (a path or URL); see
    :func:`loopbus.bus.sqlite.readonly.query` (SQLite) and :func:`loopbus.bus.postgres.query.query`."""
    if target is None:
        target = os.environ.get("LOOPBUS_BUS") or "loopbus.db"
    if backend_of(target) == "postgres":
        from loopbus.bus.postgres.query import query as pg_query

        return pg_query(str(target), sql, params, timeout_s=timeout_s, interrupt=interrupt)
    from loopbus.bus.sqlite.readonly import query as sqlite_query

    return sqlite_query(sqlite_path(target), sql, params, timeout_s=timeout_s, interrupt=interrupt)


def describe(target: str | os.PathLike[str]) -> str:
    """How to show a bus address in messages (a URL's password hidden)."""
    if backend_of(target) == "postgres":
        from loopbus.bus.postgres.connect import parse_url

        return parse_url(str(target)).url
    return str(Path(sqlite_path(target)))


__all__ = ["Store", "StoreTransaction", "backend_of", "describe", "is_url", "open", "query"]
