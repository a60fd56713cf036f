"""Leases on a PostgreSQL bus (see :mod:`loopbus.bus.lease`): a session advisory lock held on a
connection of the lease's own, so the server frees it when the holder's process dies."""

from __future__ import annotations

import contextlib
from typing import Any

from loopbus.bus.lease import LeaseHeld, held_message, holder_description
from loopbus.bus.postgres.connect import PgTarget, connect, wrap

_KEY = "hashtext(%s), hashtext(%s)"  # (schema, name): two buses in one database never clash


class PgLease:
    """A held lease: the advisory lock lives as long as this connection."""

    def __init__(self, name: str, conn: Any) -> None:
        self.name = name
        self._conn: Any = conn

    def release(self) -> None:
        """Give the lease up (idempotent): closing the connection drops the lock."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> PgLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(conn: Any, target: PgTarget, name: str) -> bool:
    return bool(
        conn.execute(f"SELECT pg_try_advisory_lock({_KEY})", (target.schema, name)).fetchone()[0]
    )


def take(target: PgTarget, name: str) -> PgLease:
    """Take lease ``name`` or raise LeaseHeld naming the holder."""
    conn = connect(target, autocommit=True)
    try:
        if not _try_lock(conn, target, name):
            row = conn.execute("SELECT holder FROM leases WHERE name = %s", (name,)).fetchone()
            holder = row[0] if row else None
            raise LeaseHeld(held_message(name, str(target), holder), holder)
        conn.execute(
            "INSERT INTO leases (name, holder) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
            "SET holder = excluded.holder, acquired_at = excluded.acquired_at",
            (name, holder_description()),
        )
    except LeaseHeld:
        conn.close()
        raise
    except BaseException as exc:
        conn.close()
        wrapped = wrap(target, exc)
        if wrapped is exc:
            raise
        raise wrapped from exc
    return PgLease(name, conn)


def holder(target: PgTarget, name: str) -> str | None:
    """The holder description of lease ``name`` if a live session holds it, else None."""
    try:
        take(target, name).release()
    except LeaseHeld as exc:
        return exc.holder
    return None


__all__ = ["PgLease", "holder", "take"]
