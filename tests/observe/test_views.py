"""The Datasette-friendly bus: migration 5's views and the canned queries of the metadata file."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loopbus.agents.observe.runs import list_runs, load_timeline
from loopbus.bus import query

from .conftest import ObservedBus

METADATA = Path(__file__).resolve().parents[2] / "bus" / "datasette-metadata.json"


def _rows(path: Path, sql: str, params: object = ()) -> list[dict[str, object]]:
    result = query(path, sql, params)  # type: ignore[arg-type]
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def test_views_agree_with_the_runs_library(observed: ObservedBus) -> None:
    path = observed.path
    runs = {r["run_id"]: r for r in _rows(path, "SELECT * FROM runs")}
    assert {k: v["outcome"] for k, v in runs.items()} == observed.outcomes
    for summary in list_runs(path):
        row = runs[summary.run_id]
        assert (row["agent"], row["turns"], row["started_at"], row["ended_at"]) == (
            summary.agent,
            summary.turns,
            summary.started_at,
            summary.ended_at,
        )
    for run_id in observed.outcomes:
        timeline = load_timeline(path, run_id)
        calls = _rows(path, "SELECT * FROM model_calls WHERE run_id = ? ORDER BY id", (run_id,))
        assert [c["turn"] for c in calls] == [t.number for t in timeline.turns]
        assert [c["context_fill"] for c in calls] == [round(t.fill or 0, 4) for t in timeline.turns]
        assert all(c["budget"] == 0.4 for c in calls)
        decisions = _rows(path, "SELECT action FROM decisions WHERE run_id = ?", (run_id,))
        assert [d["action"] for d in decisions] == [t.action for t in timeline.turns if t.action]
        tools = _rows(path, "SELECT * FROM tool_calls WHERE run_id = ? ORDER BY id", (run_id,))
        assert [t["tool"] for t in tools] == [t.tool for t in timeline.turns if t.tool]
        assert all(t["status"] in ("ok", "error") and t["finished_at"] for t in tools)
    errors = _rows(path, "SELECT kind, run_id FROM errors")
    assert ("outcome.max_turns", observed.run_of("max_turns")) in {
        (e["kind"], e["run_id"]) for e in errors
    }
    assert any(e["kind"] != "outcome.max_turns" for e in errors)  # the missing.txt turn


def test_metadata_canned_queries_run_on_a_real_bus(observed: ObservedBus) -> None:
    metadata = json.loads(METADATA.read_text(encoding="utf-8"))
    database = metadata["databases"]["loopbus"]
    views = {r["name"] for r in _rows(observed.path, "SELECT name FROM sqlite_master")}
    assert set(database["tables"]) <= views  # every described table or view exists
    run = observed.run_of("done")
    values = {"run_id": run, "share": "0.5", "event_id": None}
    last = _rows(observed.path, "SELECT max(id) AS id FROM outbox WHERE run_id = ?", (run,))
    values["event_id"] = last[0]["id"]
    results = {}
    for name, canned in database["queries"].items():
        params = {p: values[p] for p in re.findall(r"(?<!:):([a-z_]+)", canned["sql"])}
        results[name] = _rows(observed.path, canned["sql"], params)  # read-only: SELECT only
    assert len(results["recent_runs"]) == len(observed.outcomes)
    assert len(results["run_timeline"]) == len(load_timeline(observed.path, run).events)
    assert results["unfinished_runs"] == []
    assert {r["agent"] for r in results["outcomes_per_agent"]} == {"assistant", "watcher"}
    assert results["near_budget"]  # the elided run stays just under its budget
    # The outcome was caused by the run's task event (no trigger): two links.
    assert [r["event_type"] for r in results["causes"]] == ["run.outcome", "run.task"]
