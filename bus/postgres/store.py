"""PgBus: the blocking bus (the :class:`loopbus.bus.store.Store` protocol) on PostgreSQL.

Connections: a writer (transactions: publish, ack, prune), a reader (autocommit reads) and,
once something subscribes, a listener thread that LISTENs for the bus's channel. Each is
used under its own lock, so a PgBus may be shared by threads (like SyncBus).

* Publishing: ``INSERT ... RETURNING id`` and COMMIT (two round trips); the statement-level
  trigger orders ids by commit and sends the NOTIFY (see :mod:`loopbus.bus.postgres`).
* ``synchronous="NORMAL"`` maps to ``synchronous_commit = off`` (the last commits may be lost
  on a server crash, never on a client crash), like SQLite's opt-in.
* ``busy_timeout_s`` becomes ``lock_timeout``: how long a write waits for another writer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from loopbus.bus.errors import BusClosed, BusError, BusNotFound, PayloadTooLarge, PruneWarning
from loopbus.bus.events import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    CursorInfo,
    Event,
    NewEvent,
    PruneReport,
    check_id,
    check_name,
    events_from_rows,
    prepare_row,
)
from loopbus.bus.postgres import migrations
from loopbus.bus.postgres.connect import PgTarget, connect, parse_url, wrap
from loopbus.bus.postgres.sqlbits import HEAD_SQL, SELECT_EVENTS, type_filter
from loopbus.bus.postgres.transaction import PgTransaction
from loopbus.bus.store import AppendMixin

log = logging.getLogger("loopbus.bus")

INSERT_EVENT = (
    "INSERT INTO outbox (agent, event_type, payload, run_id, caused_by) "
    "VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
_ACK = """
    INSERT INTO cursors (consumer, last_seen_id) VALUES (%s, %s)
    ON CONFLICT (consumer) DO UPDATE
    SET last_seen_id = excluded.last_seen_id, updated_at = excluded.updated_at
    WHERE excluded.last_seen_id > cursors.last_seen_id
"""
_UNFINISHED_RUNS = """
    SELECT t.run_id FROM outbox AS t
    WHERE t.event_type = 'run.task' AND t.agent = %s AND t.run_id IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM outbox AS o WHERE o.event_type = 'run.outcome' AND o.run_id = t.run_id
      )
    ORDER BY t.id
"""


@dataclass
class PgStats:
    """Counters of one :class:`PgBus` (for tests and benchmarks), like ``BusStats``."""

    transactions: int = 0
    events: int = 0
    batches: int = 0
    largest_batch: int = 0


class PgBus(AppendMixin):
    """An open PostgreSQL bus: ``with PgBus("postgresql://host/db?schema=s") as bus: ...``.

    Same methods and options as :class:`bus.SyncBus`; ``path`` is the URL (password hidden).
    """

    def __init__(
        self,
        url: str | PgTarget,
        *,
        synchronous: str = "FULL",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        create: bool = True,
        safety_poll_s: float = 1.0,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.target = url if isinstance(url, PgTarget) else parse_url(url)
        mode = str(synchronous).upper()
        if mode not in ("FULL", "NORMAL"):
            raise BusError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        if not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
            raise BusError(
                f"max_payload_bytes must be a positive integer, not {max_payload_bytes!r}"
            )
        if not 0 < safety_poll_s:
            raise BusError(f"safety_poll_s must be positive, not {safety_poll_s!r}")
        self.synchronous = mode
        self.max_payload_bytes = max_payload_bytes
        self.safety_poll_s = float(safety_poll_s)
        self.busy_timeout_s = max(float(busy_timeout_s), 5.0)
        self.read_only = False
        self.stats = PgStats()
        self._closed = False
        self._wlock = threading.RLock()
        self._rlock = threading.Lock()
        self._tx_threads: set[int] = set()
        self._waker: Any = None  # loopbus.bus.postgres.subscription.Waker, started by subscribe
        self._wconn = connect(self.target, autocommit=False)
        # Both psycopg connections are untyped (connect() returns Any); this one is None until
        # the migrations are done.
        self._rconn: Any = None
        try:
            where = f"schema {self.target.schema!r} of {self.target}"
            if create:
                migrations.migrate(self._wconn, self.target.schema, where)
            else:
                version = migrations.read_version(self._wconn, where)
                self._wconn.rollback()
                if version == 0:
                    raise BusNotFound(
                        f"no bus in {where}; publish an event to create it, or pass the URL "
                        "of an existing bus with --bus / $LOOPBUS_BUS"
                    )
                if version < migrations.SCHEMA_VERSION:
                    migrations.migrate(self._wconn, self.target.schema, where)
            lock_ms = int(self.busy_timeout_s * 1000)
            self._wconn.execute(f"SET lock_timeout = {lock_ms}")
            if mode == "NORMAL":
                self._wconn.execute("SET synchronous_commit = off")
            self._wconn.commit()
            self._rconn = connect(self.target, autocommit=True)
        except BaseException as exc:
            self._close_connections()
            wrapped = wrap(self.target, exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    # ------------------------------------------------------------------ plumbing

    @property
    def path(self) -> str:
        """The bus URL (password hidden)."""
        return self.target.url

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _close_connections(self) -> None:
        for conn in (self._wconn, self._rconn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def close(self) -> None:
        """Stop the listener and close the connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._waker is not None:
            self._waker.close()
        with self._wlock, self._rlock:
            self._close_connections()

    def __enter__(self) -> PgBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise BusClosed(f"the bus {self.target} is closed")
        if threading.get_ident() in self._tx_threads:
            raise BusError(
                "this thread is inside `with bus.transaction() as tx`: use tx.publish() / "
                "tx.ack() there (bus.publish() would wait for the transaction to end)"
            )

    def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if self._closed:
            raise BusClosed(f"the bus {self.target} is closed")
        with self._rlock:
            try:
                return self._rconn.execute(sql, params).fetchall()
            except Exception as exc:
                raise self._wrap(exc) from exc

    def _wrap(self, exc: BaseException) -> BaseException:
        if isinstance(exc, UnicodeEncodeError):
            from loopbus.bus.errors import not_utf8_message

            return BusError(not_utf8_message(exc))
        return wrap(self.target, exc)

    def _write(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one write transaction; commit, or roll back on error."""
        self._check_usable()
        with self._wlock:
            if self._closed:
                raise BusClosed(f"the bus {self.target} is closed")
            conn = self._wconn
            try:
                result = fn(conn, *args)
                conn.commit()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    conn.rollback()
                wrapped = self._wrap(exc)
                if wrapped is exc:
                    raise
                raise wrapped from exc
            self.stats.transactions += 1
        return result

    def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> list[int]:
        if len(rows) == 1:
            ids = [conn.execute(INSERT_EVENT, rows[0]).fetchone()[0]]
        else:
            cur = conn.cursor()
            cur.executemany(INSERT_EVENT, rows, returning=True)
            ids = []
            while True:
                ids.append(cur.fetchone()[0])
                if not cur.nextset():
                    break
        self.stats.events += len(ids)
        return ids

    def _ack(self, conn: Any, consumer: str, event_id: int) -> None:
        head = conn.execute(HEAD_SQL).fetchone()[0]
        if event_id > head:
            raise BusError(
                f"cannot ack event {event_id} for consumer {consumer!r}: the last event id is "
                f"{head}; ack only ids you have received"
            )
        conn.execute(_ACK, (consumer, event_id))

    # ------------------------------------------------------------------ writes

    def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        agent: str = "cli",
        run_id: str | None = None,
        caused_by: int | None = None,
    ) -> int:
        """Publish one event; return its id after the commit (see Bus.publish)."""
        row = prepare_row(event_type, payload, agent, run_id, caused_by, self.max_payload_bytes)
        return self._write(self._insert, [row])[0]

    def _rows(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        rows = []
        context = {"max_payload_bytes": self.max_payload_bytes}
        for event in events:
            if not isinstance(event, NewEvent):
                event = NewEvent.model_validate(event, context=context)
            text = event.payload_json
            if (size := len(text.encode("utf-8"))) > self.max_payload_bytes:
                raise PayloadTooLarge(
                    f"payload of a {event.event_type!r} event is {size} bytes as JSON, above "
                    f"the bus limit of {self.max_payload_bytes} bytes"
                )
            rows.append((event.agent, event.event_type, text, event.run_id, event.caused_by))
        return rows

    def publish_many(self, events: Iterable[NewEvent | Mapping[str, Any]]) -> list[int]:
        """Publish several events in one transaction; their ids in order (consecutive)."""
        self._check_usable()
        rows = self._rows(events)
        if not rows:
            return []
        return self._write(self._insert, rows)

    def ack(self, consumer: str, event_id: int) -> None:
        """Commit ``consumer``'s cursor at ``event_id`` (it never moves backwards)."""
        check_name("consumer", consumer)
        check_id("event id", event_id)
        self._write(self._ack, consumer, event_id)

    def unregister(self, consumer: str) -> int | None:
        """Delete ``consumer``'s cursor; the cursor it had, or None if it was unknown."""
        check_name("consumer", consumer)

        def run(conn: Any) -> int | None:
            row = conn.execute(
                "DELETE FROM cursors WHERE consumer = %s RETURNING last_seen_id", (consumer,)
            ).fetchone()
            return None if row is None else row[0]

        return self._write(run)

    def register(self, consumer: str) -> int:
        """Register ``consumer`` (cursor 0 if new) and return its committed cursor."""
        check_name("consumer", consumer)

        def run(conn: Any) -> int:
            conn.execute(
                "INSERT INTO cursors (consumer) VALUES (%s) ON CONFLICT (consumer) DO NOTHING",
                (consumer,),
            )
            return conn.execute(
                "SELECT last_seen_id FROM cursors WHERE consumer = %s", (consumer,)
            ).fetchone()[0]

        return self._write(run)

    def advance(self, consumer: str, delivered: int, scanned: int) -> int:
        """Move the cursor to ``scanned`` if it is at or past ``delivered`` (see
        :func:`loopbus.bus.sqlite.sqlops.advance_cursor`); the cursor after."""

        def run(conn: Any) -> int:
            conn.execute(
                "UPDATE cursors SET last_seen_id = %s WHERE consumer = %s "
                "AND last_seen_id >= %s AND last_seen_id < %s",
                (scanned, consumer, delivered, scanned),
            )
            row = conn.execute(
                "SELECT last_seen_id FROM cursors WHERE consumer = %s", (consumer,)
            ).fetchone()
            return 0 if row is None else row[0]

        return self._write(run)

    def transaction(self) -> PgTransaction:
        """``with bus.transaction() as tx:`` — publish and ack atomically."""
        self._check_usable()
        return PgTransaction(self)

    def prune(self, *, dry_run: bool = False, max_age_s: float | None = None) -> PruneReport:
        """Delete events every registered consumer has acknowledged (see Bus.prune)."""
        if max_age_s is not None and not max_age_s >= 0:
            raise BusError(f"max_age_s must be >= 0 seconds, not {max_age_s!r}")
        report: PruneReport = self._write(self._prune, dry_run, max_age_s)
        if dry_run:
            self.stats.transactions -= 1
        for consumer in report.overtaken:
            message = next(w for w in report.warnings if repr(consumer) in w)
            log.warning(message)
            warnings.warn(message, PruneWarning, stacklevel=2)
        return report

    def _prune(self, conn: Any, dry_run: bool, max_age_s: float | None) -> PruneReport:
        # One prune at a time; publishes are not blocked (they only add ids above).
        conn.execute("SELECT pruned_through FROM loopbus_meta FOR UPDATE")
        slow = conn.execute(
            "SELECT consumer, last_seen_id FROM cursors ORDER BY last_seen_id, consumer LIMIT 1"
        ).fetchone()
        boundary = slow[1] if slow else 0
        notes: list[str] = []
        if slow is None:
            notes.append("no registered consumers: nothing is acknowledged, nothing to prune")
        if max_age_s is not None:
            cutoff = datetime.now(UTC) - timedelta(seconds=max_age_s)
            iso = cutoff.strftime("%Y-%m-%dT%H:%M:%S.") + f"{cutoff.microsecond // 1000:03d}Z"
            aged = conn.execute(
                "SELECT coalesce(max(id), 0) FROM outbox WHERE created_at < %s", (iso,)
            ).fetchone()[0]
            boundary = max(boundary, aged)
        deleted = conn.execute(
            "SELECT count(*) FROM outbox WHERE id <= %s", (boundary,)
        ).fetchone()[0]
        overtaken: list[str] = []
        rows = conn.execute(
            """SELECT c.consumer, c.last_seen_id,
                      (SELECT count(*) FROM outbox o WHERE o.id > c.last_seen_id AND o.id <= %s)
               FROM cursors c WHERE c.last_seen_id < %s ORDER BY c.consumer""",
            (boundary, boundary),
        ).fetchall()
        for consumer, seen, missed in rows:
            if missed:
                overtaken.append(consumer)
                notes.append(
                    f"prune with max_age_s={max_age_s:g} {'would delete' if dry_run else 'deletes'}"
                    f" {missed} event(s) that consumer {consumer!r} (cursor {seen}) has not "
                    f"acknowledged; it will never see them"
                )
        if dry_run:
            conn.rollback()
        elif deleted:
            top = conn.execute("SELECT max(id) FROM outbox WHERE id <= %s", (boundary,)).fetchone()[
                0
            ]
            conn.execute("DELETE FROM outbox WHERE id <= %s", (boundary,))
            # The head survives deleting the newest events: ids are never handed out again.
            conn.execute(
                "UPDATE loopbus_meta SET pruned_through = greatest(pruned_through, %s)", (top,)
            )
        return PruneReport(
            deleted=deleted,
            up_to_id=boundary if deleted else 0,
            slowest_consumer=slow[0] if slow else None,
            slowest_cursor=slow[1] if slow else None,
            dry_run=dry_run,
            overtaken=overtaken,
            warnings=notes,
        )

    # ------------------------------------------------------------------ reads

    def events(
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
        filter_sql, params = type_filter(types)
        sql = f"{SELECT_EVENTS} WHERE id > %s"
        args: list[Any] = [since_id]
        if run_id is not None:
            sql += " AND run_id = %s"
            args.append(run_id)
        sql += filter_sql + " ORDER BY id"
        args.extend(params)
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        return events_from_rows(self._read(sql, args))

    def fetch_after(
        self, position: int, filter_sql: str, params: list[Any], limit: int
    ) -> tuple[list[Event], int]:
        """Up to ``limit`` events after ``position`` and the new scan position (which passes
        non-matching events up to the head seen in the same snapshot)."""
        if not filter_sql:
            rows = self._read(
                f"{SELECT_EVENTS} WHERE id > %s ORDER BY id LIMIT %s", (position, limit)
            )
            return events_from_rows(rows), (rows[-1][0] if rows else position)
        if self._closed:
            raise BusClosed(f"the bus {self.target} is closed")
        with self._rlock:
            conn = self._rconn
            try:
                with conn.transaction():  # one snapshot for the head and the matches
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    head = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
                    rows = conn.execute(
                        f"{SELECT_EVENTS} WHERE id > %s AND id <= %s{filter_sql} "
                        "ORDER BY id LIMIT %s",
                        (position, head, *params, limit),
                    ).fetchall()
            except Exception as exc:
                raise self._wrap(exc) from exc
        if len(rows) == limit:
            return events_from_rows(rows), rows[-1][0]
        return events_from_rows(rows), max(head, position)

    def get(self, event_id: int) -> Event | None:
        """The event with this id, or None (never published or pruned)."""
        rows = self._read(f"{SELECT_EVENTS} WHERE id = %s", (check_id("event id", event_id),))
        return events_from_rows(rows)[0] if rows else None

    def last_id(self) -> int:
        """The last id ever committed (0 for an empty bus); pruning never lowers it."""
        return int(self._read(HEAD_SQL)[0][0])

    def unfinished_runs(self, agent: str) -> list[str]:
        """Ids of ``agent``'s runs with a ``run.task`` and no ``run.outcome``, oldest first."""
        check_name("agent", agent)
        return [row[0] for row in self._read(_UNFINISHED_RUNS, (agent,))]

    def cursors(self) -> list[CursorInfo]:
        """Registered consumers with their cursor and lag."""
        rows = self._read(
            "SELECT consumer, last_seen_id, lag, updated_at FROM consumer_lag ORDER BY consumer"
        )
        return [CursorInfo(c, int(s), int(lag), u) for c, s, lag, u in rows]

    def query(self, sql: str, params: Any = (), *, timeout_s: float | None = None) -> Any:
        """Run one read-only statement (see :func:`loopbus.bus.postgres.query.query`)."""
        from loopbus.bus.postgres.query import query

        return query(self.target, sql, params, timeout_s=timeout_s)

    def check_writable(self) -> None:
        """Nothing to check: a PostgreSQL bus is never opened read-only (SyncBus has it)."""
        self._check_usable()

    # ------------------------------------------------------------------ leases

    def lease(self, name: str) -> Any:
        """Take lease ``name`` (one live process per name) or raise LeaseHeld."""
        from loopbus.bus.postgres.lease import take

        self._check_usable()
        return take(self.target, name)

    def lease_holder(self, name: str) -> str | None:
        """Who holds lease ``name`` (a JSON description), or None when nobody does."""
        from loopbus.bus.postgres.lease import holder

        return holder(self.target, name)

    # ------------------------------------------------------------------ waiting

    def _ensure_waker(self) -> Any:
        from loopbus.bus.postgres.subscription import Waker

        with self._wlock:
            if self._waker is None:
                self._waker = Waker(self.target)
        return self._waker

    def subscribe(
        self,
        consumer: str,
        types: str | Iterable[str] = ("*",),
        timeout: float | None = None,
        *,
        batch_size: int = 100,
        partition: tuple[int, int] | None = None,
    ) -> Iterator[Event]:
        """Events for ``consumer`` after its committed cursor, waiting for new ones (see
        SyncBus.subscribe)."""
        from loopbus.bus.postgres.subscription import PgSubscription

        self._check_usable()
        check_name("consumer", consumer)
        sub = PgSubscription(self, consumer, types, batch_size, partition=partition)
        return sub.iterate(timeout)

    def follow(
        self,
        *,
        since_id: int = 0,
        types: str | Iterable[str] = ("*",),
        timeout: float | None = None,
        batch_size: int = 100,
    ) -> Iterator[Event]:
        """Events after ``since_id`` without a consumer cursor, waiting for new ones."""
        from loopbus.bus.postgres.subscription import PgSubscription

        self._check_usable()
        check_id("since_id", since_id)
        sub = PgSubscription(self, None, types, batch_size, since_id=since_id)
        return sub.iterate(timeout)


__all__ = ["PgBus", "PgStats", "PgTransaction"]
