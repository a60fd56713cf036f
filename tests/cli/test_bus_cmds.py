"""The bus commands in-process (CliRunner) on real bus files: happy paths and every user error."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from loopbus.bus import NewEvent, SyncBus

Invoke = Callable[..., Result]
Snapshot = Callable[[Path], dict[str, bytes]]

EVENT_KEYS = {"id", "agent", "event_type", "payload", "created_at", "run_id", "caused_by"}


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_user_error(result, fragment: str) -> None:
    """`Error: ...` on stderr (containing `fragment`), exit 2, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stderr.startswith("Error: ") or "\nError: " in result.stderr, result.stderr
    assert fragment.lower() in result.stderr.lower(), result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- publish


def test_publish_prints_id_and_stores_event(invoke: Invoke, bus_file: Path) -> None:
    first = invoke("publish", "file.found", '{"path": "README.md", "size": 12}')
    second = invoke("publish", "finding", '["a", 1, null]', "--agent", "reviewer")
    assert (first.exit_code, second.exit_code) == (0, 0), first.output + second.output
    assert first.stdout == "1\n" and second.stdout == "2\n"
    with SyncBus(bus_file, create=False) as bus:
        one, two = bus.get(1), bus.get(2)
    assert one is not None and two is not None
    assert (one.event_type, one.agent, one.payload) == (
        "file.found",
        "cli",
        {"path": "README.md", "size": 12},
    )
    assert (two.event_type, two.agent, two.payload) == ("finding", "reviewer", ["a", 1, None])


def test_publish_reads_payload_from_stdin(invoke: Invoke, bus_file: Path) -> None:
    result = invoke("publish", "tick", "-", input='{"n": 1, "text": "héllo"}\n')
    assert result.exit_code == 0, result.output
    with SyncBus(bus_file, create=False) as bus:
        event = bus.get(int(result.stdout))
    assert event is not None and event.payload == {"n": 1, "text": "héllo"}


@pytest.mark.parametrize(
    "payload", ["{", "{'a': 1}", "", "nope", "[1, 2,]", "NaN", '{"x": Infinity}']
)
def test_publish_bad_json_is_refused(
    invoke: Invoke, populated_bus: Path, payload: str, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    result = invoke("publish", "file.found", payload)
    assert_user_error(result, "payload is not valid JSON")
    assert snapshot(populated_bus) == before


@pytest.mark.parametrize(
    "event_type",
    ["File.Found", "file..found", ".file", "file.", "1file", "a b", "x" * 129, "file/found"],
)
def test_publish_bad_event_type_is_refused(
    invoke: Invoke, populated_bus: Path, event_type: str, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    result = invoke("publish", event_type, "{}")
    assert_user_error(result, "invalid event type")
    assert snapshot(populated_bus) == before


def test_publish_bad_input_creates_no_file(invoke: Invoke, bus_file: Path) -> None:
    assert_user_error(invoke("publish", "Bad Type", "{}"), "invalid event type")
    assert_user_error(invoke("publish", "ok", "{"), "not valid JSON")
    assert_user_error(invoke("publish", "ok", "-", input="x" * 10), "not valid JSON")
    assert not bus_file.exists()
    assert list(bus_file.parent.iterdir()) == []


def test_publish_oversized_payload_is_refused(
    invoke: Invoke, populated_bus: Path, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    big = json.dumps({"blob": "x" * (1 << 20)})
    result = invoke("publish", "file.found", "-", input=big)
    assert_user_error(result, "above the bus limit")
    assert snapshot(populated_bus) == before


def test_publish_empty_agent_is_refused(
    invoke: Invoke, populated_bus: Path, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    assert_user_error(invoke("publish", "file.found", "{}", "--agent", ""), "agent")
    assert snapshot(populated_bus) == before


# ----------------------------------------------------------------------------- tail


def test_tail_prints_readable_lines_oldest_first(invoke: Invoke, populated_bus: Path) -> None:
    result = invoke("tail")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert [line.split()[0] for line in lines] == ["1", "2", "3", "4", "5"]
    assert lines[0].split()[2:4] == ["scanner", "file.found"]
    assert lines[0].endswith('{"path":"README.md"}')
    assert "run=r1" in lines[4] and "caused_by=4" in lines[4]
    with SyncBus(populated_bus, create=False) as bus:
        created = bus.get(1).created_at  # type: ignore[union-attr]
    assert lines[0].split()[1] == created


def test_tail_json_lines_parse(invoke: Invoke, populated_bus: Path) -> None:
    result = invoke("tail", "--json")
    assert result.exit_code == 0, result.output
    records = json_lines(result.stdout)
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5]
    assert all(set(r) == EVENT_KEYS for r in records)
    assert records[4] == {
        **records[4],
        "agent": "worker",
        "event_type": "run.decision",
        "payload": {"tool": "RunPython"},
        "run_id": "r1",
        "caused_by": 4,
    }


def test_tail_filters_by_type_globs(invoke: Invoke, populated_bus: Path) -> None:
    one = json_lines(invoke("tail", "--json", "--type", "file.*").stdout)
    assert [r["id"] for r in one] == [1, 2]
    two = json_lines(invoke("tail", "--json", "--type", "run.*", "--type", "finding").stdout)
    assert [r["id"] for r in two] == [3, 4, 5]
    none = invoke("tail", "--type", "nothing.*")
    assert none.exit_code == 0 and none.stdout == ""


def test_tail_since_and_limit(invoke: Invoke, populated_bus: Path) -> None:
    assert [r["id"] for r in json_lines(invoke("tail", "--json", "--since", "3").stdout)] == [4, 5]
    assert [
        r["id"] for r in json_lines(invoke("tail", "--json", "--since", "1", "-n", "2").stdout)
    ] == [2, 3]
    # Without --since, --limit keeps the most recent events.
    assert [r["id"] for r in json_lines(invoke("tail", "--json", "--limit", "2").stdout)] == [4, 5]
    assert invoke("tail", "--since", "5").stdout == ""


def test_tail_defaults_to_last_twenty(invoke: Invoke, bus_file: Path) -> None:
    with SyncBus(bus_file) as bus:
        for i in range(30):
            bus.publish("tick" if i % 3 else "tock", {"i": i})
    ids = [r["id"] for r in json_lines(invoke("tail", "--json").stdout)]
    assert ids == list(range(11, 31))
    assert len(json_lines(invoke("tail", "--json", "-n", "0").stdout)) == 30
    # A rare type far back still fills the requested count.
    tocks = [
        r["id"] for r in json_lines(invoke("tail", "--json", "--type", "tock", "-n", "4").stdout)
    ]
    assert tocks == [19, 22, 25, 28]


def test_tail_looks_far_back_for_rare_types(invoke: Invoke, bus_file: Path) -> None:
    with SyncBus(bus_file) as bus:
        bus.publish("rare", {"n": 1})
        bus.publish("rare", {"n": 2})
        bus.publish_many([NewEvent(event_type="noise", payload=i) for i in range(3000)])
        bus.publish("rare", {"n": 3})
    records = json_lines(invoke("tail", "--json", "--type", "rare", "-n", "3").stdout)
    assert [r["payload"] for r in records] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [r["id"] for r in records] == [1, 2, 3003]
    assert [r["payload"] for r in json_lines(invoke("tail", "--json", "-n", "2").stdout)] == [
        2999,
        {"n": 3},
    ]


def test_tail_shortens_huge_payloads_but_json_keeps_them(invoke: Invoke, bus_file: Path) -> None:
    with SyncBus(bus_file) as bus:
        bus.publish("blob", {"data": "y" * 5000})
    line = invoke("tail").stdout.rstrip("\n")
    assert len(line) < 400 and line.endswith("…")
    assert json_lines(invoke("tail", "--json").stdout)[0]["payload"] == {"data": "y" * 5000}


# ----------------------------------------------------------------------------- sql


def test_sql_prints_a_table(invoke: Invoke, populated_bus: Path) -> None:
    result = invoke("sql", "SELECT event_type, count(*) AS n FROM outbox GROUP BY 1 ORDER BY 1")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert lines[0] == ["event_type", "n"]
    rows = [line for line in lines if len(line) == 2 and line[0] != "event_type"]
    assert rows == [["file.found", "2"], ["finding", "1"], ["run.decision", "1"], ["run.task", "1"]]


def test_sql_json_and_csv(invoke: Invoke, populated_bus: Path) -> None:
    statement = "SELECT id, agent, run_id, json_extract(payload, '$.path') AS path FROM outbox WHERE id <= 4"
    records = json_lines(invoke("sql", statement, "--json").stdout)
    assert records[0] == {"id": 1, "agent": "scanner", "run_id": None, "path": "README.md"}
    assert records[3] == {"id": 4, "agent": "cli", "run_id": "r1", "path": None}
    rows = list(csv.reader(io.StringIO(invoke("sql", statement, "--csv").stdout)))
    assert rows[0] == ["id", "agent", "run_id", "path"]
    assert rows[1] == ["1", "scanner", "", "README.md"]
    assert len(rows) == 5


def test_sql_params_and_duplicate_columns(invoke: Invoke, populated_bus: Path) -> None:
    result = invoke(
        "sql",
        "SELECT id, id FROM outbox WHERE agent = ? AND id > ?",
        "-p",
        "scanner",
        "-p",
        "1",
        "--json",
    )
    assert json_lines(result.stdout) == [{"id": 2, "id_2": 2}]


def test_sql_empty_result_and_read_pragmas(invoke: Invoke, populated_bus: Path) -> None:
    empty = invoke("sql", "SELECT * FROM outbox WHERE id > 100")
    assert empty.exit_code == 0 and "no rows" in empty.stdout
    info = invoke("sql", "PRAGMA table_info(outbox)", "--json")
    assert info.exit_code == 0
    assert "payload" in {r["name"] for r in json_lines(info.stdout)}


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO outbox (agent, event_type, payload) VALUES ('x', 'y', '{}')",
        "UPDATE cursors SET last_seen_id = 0",
        "DELETE FROM outbox",
        "DROP TABLE outbox",
        "DROP VIEW consumer_lag",
        "CREATE TABLE t (x)",
        "ATTACH DATABASE 'other.db' AS other",
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA application_id = 1",
        "VACUUM",
        "REPLACE INTO cursors (consumer, last_seen_id) VALUES ('x', 1)",
    ],
)
def test_sql_refuses_writes(
    invoke: Invoke, populated_bus: Path, statement: str, tmp_path: Path, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    result = invoke("sql", statement)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.output
    assert snapshot(populated_bus) == before
    assert not (tmp_path / "other.db").exists()


def test_sql_invalid_query_is_a_user_error(
    invoke: Invoke, populated_bus: Path, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    for statement in ["SELEC 1", "SELECT * FROM nope"]:
        result = invoke("sql", statement)
        assert result.exit_code == 2 and result.stderr.startswith("Error: "), result.output
    assert_user_error(invoke("sql", "SELECT 1", "--json", "--csv"), "one of --json and --csv")
    assert snapshot(populated_bus) == before


# ----------------------------------------------------------------------------- cursors


def test_cursors_table_and_json(invoke: Invoke, populated_bus: Path) -> None:
    table = invoke("cursors")
    assert table.exit_code == 0, table.output
    rows = {
        line.split()[0]: line.split()[1:3] for line in table.stdout.splitlines() if line.strip()
    }
    assert rows["consumer"] == ["last_seen_id", "lag"]
    assert rows["indexer"] == ["2", "3"] and rows["mailer"] == ["5", "0"]
    records = {r["consumer"]: r for r in json_lines(invoke("cursors", "--json").stdout)}
    assert set(records) == {"indexer", "mailer"}
    assert records["indexer"]["last_seen_id"] == 2 and records["indexer"]["lag"] == 3
    assert set(records["mailer"]) == {"consumer", "last_seen_id", "lag", "updated_at"}


def test_cursors_on_a_bus_without_consumers(invoke: Invoke, bus_file: Path) -> None:
    assert invoke("publish", "x", "{}").exit_code == 0
    result = invoke("cursors")
    assert result.exit_code == 0 and "no consumers" in result.stdout
    assert invoke("cursors", "--json").stdout == ""


# ----------------------------------------------------------------------------- prune


def test_prune_dry_run_then_prune(invoke: Invoke, populated_bus: Path, snapshot: Snapshot) -> None:
    before = snapshot(populated_bus)
    dry = invoke("prune", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout == "2 events would be deleted\n"
    assert snapshot(populated_bus) == before
    real = invoke("prune")
    assert real.stdout == "2 events deleted\n"
    assert [r["id"] for r in json_lines(invoke("tail", "--json").stdout)] == [3, 4, 5]
    assert invoke("prune").stdout == "0 events deleted\n"
    # Ids are never reused after a prune.
    assert invoke("publish", "x", "{}").stdout == "6\n"


def test_prune_max_age_warns_about_overtaken_consumers(invoke: Invoke, populated_bus: Path) -> None:
    time.sleep(0.01)  # created_at has millisecond resolution: make every event older than "now"
    dry = invoke("prune", "--dry-run", "--max-age", "0s")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout == "5 events would be deleted\n"
    assert "Warning:" in dry.stderr and "indexer" in dry.stderr and "mailer" not in dry.stderr
    real = invoke("prune", "--max-age", "0")
    assert real.stdout == "5 events deleted\n" and "indexer" in real.stderr
    assert invoke("prune", "--max-age", "7d").stdout == "0 events deleted\n"


@pytest.mark.parametrize("value", ["soon", "7y", "-1d", "12 hours", ""])
def test_prune_bad_duration_is_refused(
    invoke: Invoke, populated_bus: Path, value: str, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    result = invoke("prune", "--max-age", value)
    assert_user_error(result, "--max-age")
    assert snapshot(populated_bus) == before


def test_duration_units() -> None:
    from loopbus.agents.cli.bus_cmds import Duration

    convert = Duration().convert
    assert [convert(v, None, None) for v in ["7d", "12h", "30m", "3600s", "90", "1.5h", "2w"]] == [
        604800,
        43200,
        1800,
        3600,
        90,
        5400,
        1209600,
    ]


# ----------------------------------------------------------------------------- files and usage


@pytest.mark.parametrize(
    "args",
    [
        ["tail"],
        ["tail", "--follow"],
        ["sql", "SELECT 1"],
        ["cursors"],
        ["prune"],
        ["prune", "--dry-run"],
    ],
)
def test_read_commands_never_create_a_bus(invoke: Invoke, bus_file: Path, args: list[str]) -> None:
    result = invoke(*args)
    assert_user_error(result, str(bus_file))
    assert not bus_file.exists()
    assert list(bus_file.parent.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["tail"],
        ["tail", "--json", "--type", "file.*", "--since", "1"],
        ["sql", "SELECT * FROM consumer_lag"],
        ["sql", "SELECT 1", "--csv"],
        ["cursors"],
        ["cursors", "--json"],
        ["prune", "--dry-run"],
        ["prune", "--dry-run", "--max-age", "1h"],
    ],
)
def test_read_commands_leave_the_file_unchanged(
    invoke: Invoke, populated_bus: Path, args: list[str], snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert snapshot(populated_bus) == before


@pytest.mark.parametrize(
    "args",
    [
        ["publish", "file.found", "{}"],
        ["tail"],
        ["sql", "SELECT count(*) FROM outbox"],
        ["cursors"],
        ["prune", "--dry-run"],
        ["prune"],
    ],
)
def test_newer_bus_file_is_refused(
    invoke: Invoke, newer_bus: Path, args: list[str], snapshot: Snapshot
) -> None:
    before = snapshot(newer_bus)
    result = invoke(*args)
    assert_user_error(result, "upgrade loopbus")
    assert snapshot(newer_bus) == before


@pytest.mark.parametrize(
    "args", [["tail"], ["sql", "SELECT 1"], ["cursors"], ["publish", "x", "{}"]]
)
def test_a_file_that_is_not_a_bus_is_refused(
    invoke: Invoke, tmp_path: Path, args: list[str]
) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("these are not the events you are looking for\n" * 50)
    before = junk.read_bytes()
    result = invoke(*args, bus=junk)
    assert_user_error(result, "not a loopbus bus")
    assert junk.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["publish", "--bogus", "x", "{}"], "No such option"),
        (["tail", "--folow"], "No such option"),
        (["--nope", "tail"], "No such option"),
        (["cursors", "extra"], "unexpected extra argument"),
        (["tail", "--since", "-3"], "--since"),
        (["tail", "--limit", "many"], "--limit"),
        (["publish", "x"], "Missing argument"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_exit_2(
    invoke: Invoke, populated_bus: Path, args: list[str], fragment: str, snapshot: Snapshot
) -> None:
    before = snapshot(populated_bus)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Error: " in result.stderr and fragment in result.stderr, result.stderr
    assert snapshot(populated_bus) == before


@pytest.mark.parametrize("command", ["publish", "tail", "sql", "cursors", "prune"])
def test_every_command_help_has_an_example(invoke: Invoke, command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert f"loopbus {command}" in result.stdout.split("Example:", 1)[1]


def test_bus_path_that_is_a_directory(invoke: Invoke, tmp_path: Path) -> None:
    for args in (["tail"], ["publish", "x", "{}"]):
        result = invoke(*args, bus=tmp_path)
        assert result.exit_code == 2 and "Error: " in result.stderr, result.output
        assert "directory" in result.stderr
    assert list(tmp_path.iterdir()) == []
