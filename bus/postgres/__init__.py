"""The PostgreSQL bus backend (psycopg 3): the same events, cursors and views as the SQLite
bus, for agents spread over several hosts against one existing PostgreSQL server.

Open it with ``bus.open("postgresql://user@host/db?schema=NAME")`` (``schema`` defaults to
``public``; it is created when missing). Design (details in :mod:`loopbus.bus.postgres.store`):

* id order = commit order: a statement-level ``BEFORE INSERT`` trigger on ``outbox`` takes a
  transaction-scoped advisory lock, so ids are drawn from the sequence only while no other
  inserting transaction is open; a reader that saw id N never misses an id below N later.
* LISTEN/NOTIFY is a wake-up hint (the same trigger's ``pg_notify``, delivered at commit);
  subscribers re-query ``id > position`` and poll every ``safety_poll_s`` anyway.
* Read-only SQL runs in a ``READ ONLY`` transaction with a ``statement_timeout`` on a
  connection of its own (closed after, so nothing it does outlives it).
"""

from __future__ import annotations

from loopbus.bus.postgres.connect import PgTarget, parse_url

__all__ = ["PgTarget", "parse_url"]
