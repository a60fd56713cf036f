"""PostgreSQL bus addresses, connections and the mapping of driver errors to BusError."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from loopbus.bus.errors import BusError, BusNotFound

SCHEMES = ("postgresql", "postgres")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class PgTarget:
    """A parsed ``postgresql://`` bus URL: libpq's conninfo plus loopbus's ``schema``."""

    url: str  # as given (shown in messages, without the password)
    conninfo: str  # what libpq gets (the URL minus the schema parameter)
    schema: str

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this bus (one per schema)."""
        return f"loopbus_{self.schema}"

    def __str__(self) -> str:
        return self.url


def parse_url(url: str) -> PgTarget:
    """Parse ``postgresql://[user[:password]@]host[:port]/db[?schema=NAME&...]``.

    ``schema`` (default ``public``): lowercase letters, digits and ``_``; the bus's tables
    live there, so several buses can share a database. Other query parameters go to libpq.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise BusError(f"not a PostgreSQL bus URL: {url!r} (use postgresql://host/db)")
    params = parse_qsl(parts.query, keep_blank_values=True)
    schema = "public"
    rest: list[tuple[str, str]] = []
    for key, value in params:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not _SCHEMA_RE.match(schema):
        raise BusError(
            f"invalid schema {schema!r} in the bus URL: use lowercase letters, digits and '_' "
            "(at most 63 characters, not starting with a digit)"
        )
    conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
    shown = url
    if parts.password:
        shown = url.replace(f":{parts.password}@", ":***@", 1)
    return PgTarget(url=shown, conninfo=conninfo, schema=schema)


def connect(target: PgTarget, *, autocommit: bool, connect_timeout_s: float = 10.0) -> Any:
    """A psycopg connection to ``target`` with ``search_path`` set to the bus schema."""
    import psycopg
    from psycopg import sql

    try:
        conn = psycopg.connect(
            target.conninfo,
            autocommit=autocommit,
            connect_timeout=max(1, int(connect_timeout_s)),
            application_name="loopbus",
        )
    except psycopg.Error as exc:
        raise BusError(f"cannot connect to the bus {target}: {_first_line(exc)}") from exc
    try:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(target.schema)))
        if not autocommit:
            conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def wrap(target: PgTarget, exc: BaseException) -> BaseException:
    """A BusError for a psycopg error (the original is its ``__cause__``)."""
    import psycopg

    if isinstance(exc, psycopg.errors.LockNotAvailable):
        err: BusError = BusError(f"the bus {target} stayed locked by another writer; try again")
    elif isinstance(exc, psycopg.errors.UndefinedTable):
        err = BusNotFound(
            f"no bus in schema {target.schema!r} at {target}; publish an event to create it"
        )
    elif isinstance(exc, psycopg.OperationalError):
        err = BusError(f"lost the connection to the bus {target}: {_first_line(exc)}")
    elif isinstance(exc, psycopg.Error):
        err = BusError(f"bus {target}: {_first_line(exc)}")
    else:
        return exc
    err.__cause__ = exc
    return err


__all__ = ["PgTarget", "SCHEMES", "connect", "parse_url", "wrap"]
