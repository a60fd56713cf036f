"""Read-only queries about agent runs, for `loopbus runs/show/report/serve` (loopbus.agents.observe.runs).

Every query goes through :func:`loopbus.bus.sqlite.readonly.query`: the file is opened read-only, so looking at
a bus never writes to it (and works on a bus an agent is writing to). They read ``outbox``
directly rather than the Datasette views of migration 5, so a bus not yet migrated works too.
The literal event types let SQLite use migration 4's partial indexes (``outbox_run_tasks``,
``outbox_run_outcomes``).
"""

from __future__ import annotations

import os
from typing import Any

from loopbus.bus.events import Event, events_from_rows
from loopbus.bus.sqlite.readonly import query
from loopbus.bus.sqlite.sqlops import COLUMNS

Path = str | os.PathLike[str]

_RUNS = """
    SELECT t.id, t.run_id, t.agent, json_extract(t.payload, '$.task'), t.created_at,
           o.created_at, json_extract(o.payload, '$.kind'), json_extract(o.payload, '$.turns'),
           coalesce(json_extract(o.payload, '$.summary'), json_extract(o.payload, '$.reason')),
           t.caused_by
    FROM outbox AS t
    LEFT JOIN outbox AS o ON o.event_type = 'run.outcome' AND o.run_id = t.run_id
    WHERE t.event_type = 'run.task' AND t.run_id IS NOT NULL
      AND (:agent IS NULL OR t.agent = :agent)
      AND (:outcome IS NULL OR coalesce(json_extract(o.payload, '$.kind'), 'running') = :outcome)
      AND (:run_id IS NULL OR t.run_id = :run_id)
    ORDER BY t.id DESC
    LIMIT :limit
"""

RUN_COLUMNS = (
    "task_id",
    "run_id",
    "agent",
    "task",
    "started_at",
    "ended_at",
    "outcome",
    "turns",
    "detail",
    "caused_by",
)


def runs(
    path: Path,
    *,
    agent: str | None = None,
    outcome: str | None = None,
    run_id: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One row per run (newest first): the ``RUN_COLUMNS``; ``outcome`` is None while the run
    has no ``run.outcome`` (filter on it with ``outcome="running"``)."""
    params = {
        "agent": agent,
        "outcome": outcome,
        "run_id": run_id,
        "limit": -1 if limit is None else limit,
    }
    result = query(path, _RUNS, params)
    return [dict(zip(RUN_COLUMNS, row, strict=True)) for row in result.rows]


def run_events(path: Path, run_id: str) -> list[Event]:
    """Every event of one run, in id order (uses the ``outbox_by_run_id`` index)."""
    sql = f"SELECT {COLUMNS} FROM outbox WHERE run_id = ? ORDER BY id"
    return events_from_rows(query(path, sql, (run_id,)).rows)


def events_of_runs(path: Path, run_ids: list[str]) -> list[Event]:
    """Every event of these runs, in id order (one query per 500 runs)."""
    events: list[Event] = []
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        sql = f"SELECT {COLUMNS} FROM outbox WHERE run_id IN ({marks}) ORDER BY id"
        events.extend(events_from_rows(query(path, sql, chunk).rows))
    events.sort(key=lambda e: e.id)
    return events


def events_of_types(path: Path, types: tuple[str, ...], since_id: int = 0) -> list[Event]:
    """Events of exactly these types (every run's), after ``since_id``, in id order."""
    marks = ", ".join("?" for _ in types)
    sql = f"SELECT {COLUMNS} FROM outbox WHERE event_type IN ({marks}) AND id > ? ORDER BY id"
    return events_from_rows(query(path, sql, (*types, since_id)).rows)


def recent_events(path: Path, *, since_id: int = 0, limit: int = 200) -> list[Event]:
    """Up to ``limit`` events after ``since_id``: the newest ones, returned oldest first."""
    sql = f"SELECT {COLUMNS} FROM outbox WHERE id > ? ORDER BY id DESC LIMIT ?"
    return events_from_rows(reversed(query(path, sql, (since_id, limit)).rows))


def bus_summary(path: Path) -> dict[str, Any]:
    """Head id, event count, and every consumer's cursor and lag (``consumer_lag``)."""
    head = query(
        path, "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)"
    ).rows[0][0]
    count = query(path, "SELECT count(*) FROM outbox").rows[0][0]
    cursors = query(
        path,
        "SELECT consumer, last_seen_id, lag, updated_at FROM consumer_lag ORDER BY consumer",
    )
    return {
        "head_id": head,
        "events": count,
        "cursors": [dict(zip(cursors.columns, row, strict=True)) for row in cursors.rows],
    }
