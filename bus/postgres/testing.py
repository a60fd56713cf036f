"""Test helpers for the PostgreSQL backend: a fresh schema per test on the local server.

The server is the one CI starts (``.ci/run``): 127.0.0.1:5432, trust auth, user postgres,
database ``test``; ``$LOOPBUS_TEST_PG`` overrides the URL. Without a reachable server, tests
are skipped locally and fail when ``$CI`` is set (CI must never skip them silently).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    """The URL of the test server's database (no schema)."""
    return os.environ.get("LOOPBUS_TEST_PG", DEFAULT_URL)


def _unreachable(reason: str) -> None:
    import pytest

    message = f"PostgreSQL is not reachable at {server_url()}: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run the PostgreSQL tests; .ci/run starts the server)")
    pytest.skip(message)


@contextmanager
def fresh_schema(prefix: str = "t") -> Iterator[str]:
    """Yield a bus URL for a new, empty schema; drop the schema (and its bus) after."""
    import psycopg
    from psycopg import sql

    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(server_url(), autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unreachable(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        raise  # not reached: skip/fail raise
    try:
        sep = "&" if "?" in server_url() else "?"
        yield f"{server_url()}{sep}schema={schema}"
    finally:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        admin.close()


__all__ = ["DEFAULT_URL", "fresh_schema", "server_url"]
