"""PostgreSQL SQL fragments shared by the store and its subscriptions: event columns, type
globs and id partitions as WHERE clauses."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from loopbus.bus.errors import BusError

COLUMNS = "id, agent, event_type, payload, run_id, caused_by, created_at"
SELECT_EVENTS = f"SELECT {COLUMNS} FROM outbox"
# The last id ever committed: the largest stored id, or what prune deleted up to.
HEAD_SQL = (
    "SELECT greatest(coalesce((SELECT max(id) FROM outbox), 0), "
    "(SELECT pruned_through FROM loopbus_meta))"
)


def glob_regex(pattern: str) -> str:
    """A POSIX regex matching like ``fnmatch.fnmatchcase(name, pattern)`` (and SQLite GLOB)."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(r"\[")
                continue
            body = pattern[i:j].replace("\\", "\\\\")
            if body[:1] == "!":
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = j + 1
        else:
            out.append(re.escape(c) if not c.isalnum() else c)
    out.append("$")
    return "".join(out)


def type_filter(types: str | Iterable[str] | None) -> tuple[str, list[Any]]:
    """SQL (`` AND (...)``) and parameters selecting event types by fnmatch-style globs."""
    if types is None:
        return "", []
    patterns = [types] if isinstance(types, str) else list(types)
    clauses: list[str] = []
    params: list[Any] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise BusError(f"invalid event type pattern {pattern!r}: use e.g. 'file.*' or '*'")
        if pattern.strip("*") == "":
            return "", []
        if any(c in pattern for c in "*?["):
            clauses.append("event_type ~ %s")
            params.append(glob_regex(pattern))
        else:
            clauses.append("event_type = %s")
            params.append(pattern)
    if not clauses:
        return " AND false", []
    return " AND (" + " OR ".join(clauses) + ")", params


def partition_filter(partition: tuple[int, int] | None) -> tuple[str, list[int]]:
    """SQL (`` AND ...``) and parameters selecting the ids of partition ``(index, count)``."""
    if partition is None:
        return "", []
    try:
        index, count = (int(v) for v in partition)
    except (TypeError, ValueError):
        raise BusError(f"partition must be (index, count), not {partition!r}") from None
    if count < 1 or not 0 <= index < count:
        raise BusError(f"partition {partition!r}: need 0 <= index < count")
    if count == 1:
        return "", []
    return " AND id %% %s = %s", [count, index]


__all__ = ["COLUMNS", "HEAD_SQL", "SELECT_EVENTS", "glob_regex", "partition_filter", "type_filter"]
