"""Bus commands: publish, tail, sql, cursors, prune.

A thin layer over `bus`: parse options, call SyncBus / query, print. Only light
modules are imported here so that these commands start fast; `rich` is imported
lazily where a table is printed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from loopbus.agents.cli.common import SECONDS, bus_path, fail, handle_errors
from loopbus.agents.termsafe import printable, safe_json

# Readable `tail` lines cut long payloads; --json always prints them whole.
_PAYLOAD_PREVIEW_CHARS = 200
# Default number of most recent events `tail` shows when --since is not given.
_DEFAULT_TAIL = 20

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The longest duration accepted: 1000 years, older than any event (SQLite dates end at 0000).
_MAX_DURATION_S = 1000 * 365 * 86400


# --------------------------------------------------------------------------- helpers


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, SQLite's json_valid() does not.
    raise ValueError(f"{name} is not allowed in JSON")


def parse_payload(text: str) -> Any:
    """Parse a payload given on the command line; `Error:` + exit 1 when it is not JSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting
        fail(f"payload is not valid JSON: {exc}")


class Duration(click.ParamType):
    """A duration such as `7d`, `12h`, `30m`, `3600s` or a plain number of seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = _DURATION_RE.match(str(value))
        if match is None:
            self.fail(
                f"{value!r} is not a duration; use a number with a unit, e.g. 7d, 12h, 30m, 3600s",
                param,
                ctx,
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        if seconds > _MAX_DURATION_S:
            # SQLite's date arithmetic overflows long before float does.
            self.fail(
                f"{value!r} is too long; use at most {_MAX_DURATION_S // 86400:.0f}d", param, ctx
            )
        return seconds


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def event_to_dict(event: Any) -> dict[str, Any]:
    """The JSON-lines form of an event (what `tail --json` prints)."""
    return {
        "id": event.id,
        "agent": event.agent,
        "event_type": event.event_type,
        "payload": event.payload,
        "created_at": event.created_at,
        "run_id": event.run_id,
        "caused_by": event.caused_by,
    }


def format_event(event: Any) -> str:
    """One readable line: id, time, agent, type, compact payload (+ run / cause when set)."""
    # Escaped before it is cut, so a cut never splits an escape into a raw control byte.
    payload = printable(_compact(event.payload))
    if len(payload) > _PAYLOAD_PREVIEW_CHARS:
        payload = payload[: _PAYLOAD_PREVIEW_CHARS - 1] + "…"
    extra = ""
    if event.run_id is not None:
        extra += f"  run={printable(event.run_id)}"
    if event.caused_by is not None:
        extra += f"  caused_by={event.caused_by}"
    return (
        f"{event.id:>6}  {event.created_at}  {printable(event.agent):<10}  "
        f"{printable(event.event_type):<16}  {payload}{extra}"
    )


def _emit_event(event: Any, as_json: bool) -> None:
    if as_json:
        # safe_json: C1 controls and bidi overrides, which JSON leaves raw, become \\uXXXX.
        click.echo(safe_json(event_to_dict(event)))
    else:
        click.echo(format_event(event))


def _last_events(bus: Any, types: list[str] | None, count: int) -> list[Any]:
    """The `count` most recent events matching `types` (0 = all of them), oldest first.

    The bus reads forwards from an id, so look back through a window of ids that
    grows until it holds enough matching events or reaches the first id.
    """
    if count == 0:
        return list(bus.events(since_id=0, types=types))
    last = bus.last_id()
    window = max(count, 256)
    while True:
        since = max(0, last - window)
        found = list(bus.events(since_id=since, types=types))
        if len(found) >= count or since == 0:
            return found[-count:]
        window *= 8


def _silence_library_log() -> None:
    # Without any handler Python's last-resort handler prints library warnings to stderr;
    # the CLI reports them itself. A NullHandler keeps propagation to configured loggers.
    logger = logging.getLogger("loopbus")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'"
    return printable(str(value))


# JSON has no infinities (SQLite returns them for e.g. 1e999) nor NaN: `sql --json` writes
# them as these strings, so that every line stays valid JSON.
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _json_value(value: Any) -> Any:
    # Blobs have no JSON form; hex keeps them lossless and readable.
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    return value


def _same(text: str) -> str:
    return text


def _csv_value(value: Any, shown: Callable[[str], str]) -> Any:
    value = _json_value(value)
    return shown(value) if isinstance(value, str) else value


def _unique_columns(columns: Sequence[str]) -> list[str]:
    """Column names made unique (`SELECT 1, 1` must not lose a value in JSON output)."""
    seen: dict[str, int] = {}
    names: list[str] = []
    for column in columns:
        count = seen.get(column, 0) + 1
        seen[column] = count
        names.append(column if count == 1 else f"{column}_{count}")
    return names


def _print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = list(rows)
    if not rows:
        click.echo(empty)
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        # Text, not str: rich would read `[red]` in a value (or a column name) as markup.
        table.add_column(Text(printable(column)), overflow="fold")
    for row in rows:
        table.add_row(*(Text(_cell(value)) for value in row))
    if sys.stdout.isatty():
        Console(highlight=False).print(table)
        return
    # Pipes and files: plain text, a wide page so rows stay whole, no trailing blanks.
    buffer = io.StringIO()
    Console(file=buffer, width=200, highlight=False, color_system=None).print(table)
    for line in buffer.getvalue().splitlines():
        click.echo(line.rstrip())


class _SigintToFlag:
    """While active (in the main thread), Ctrl-C sets ``flag`` instead of raising
    KeyboardInterrupt: a running query checks the flag and stops cleanly."""

    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, lambda *_: self._flag.set())
            self._installed = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            previous = self._previous
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


# --------------------------------------------------------------------------- commands


@click.command()
@click.argument("event_type", metavar="TYPE")
@click.argument("payload_json", metavar="JSON")
@click.option(
    "--agent", default="cli", show_default=True, help="Agent name recorded with the event."
)
@click.pass_context
@handle_errors
def publish(ctx: click.Context, event_type: str, payload_json: str, agent: str) -> None:
    """Publish one event and print its id.

    TYPE is lowercase dot-separated segments (e.g. file.found, run.decision).
    JSON is the payload; `-` reads it from stdin.

    \b
    Example:
      loopbus publish file.found '{"path": "README.md"}'
      echo '{"n": 1}' | loopbus publish tick - --agent clock
    """
    from loopbus.bus import NewEvent
    from loopbus.bus import open as open_bus

    text = sys.stdin.read() if payload_json == "-" else payload_json
    payload = parse_payload(text)
    # Validate type and size before opening, so a bad event never creates or touches a file.
    event = NewEvent(event_type=event_type, payload=payload, agent=agent)
    with open_bus(bus_path(ctx)) as bus:
        event_id = bus.publish(event.event_type, event.payload, agent=event.agent)
    click.echo(event_id)


@click.command()
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="GLOB",
    help="Only events whose type matches GLOB (repeatable), e.g. 'file.*'.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--since",
    "since_id",
    type=click.IntRange(min=0),
    default=None,
    metavar="ID",
    help="Events with id > ID (all of them unless --limit).",
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help=f"At most N events; without --since the last N (default {_DEFAULT_TAIL}, 0 = all).",
)
@click.pass_context
@handle_errors
def tail(
    ctx: click.Context,
    types: tuple[str, ...],
    follow: bool,
    as_json: bool,
    since_id: int | None,
    limit: int | None,
) -> None:
    """Print events from the bus, oldest first; --follow waits for new ones.

    Following registers no consumer cursor, so it never holds back `prune`.
    Ctrl-C stops it.

    \b
    Example:
      loopbus tail -n 5
      loopbus tail --type 'run.*' --since 120 --json
      loopbus tail --follow --type 'file.*'
    """
    from loopbus.bus import open as open_bus

    type_list = list(types) or None
    try:
        with open_bus(bus_path(ctx), create=False) as bus:
            if since_id is None:
                events = _last_events(bus, type_list, _DEFAULT_TAIL if limit is None else limit)
                position = events[-1].id if events else bus.last_id()
            else:
                events = list(bus.events(since_id=since_id, types=type_list, limit=limit or None))
                position = events[-1].id if events else since_id
            for event in events:
                _emit_event(event, as_json)
            if follow:
                # Cursor-less: a watcher never registers a consumer, so prune is not held back.
                for event in bus.follow(since_id=position, types=type_list or ("*",)):
                    _emit_event(event, as_json)
    except KeyboardInterrupt:
        # Ctrl-C is how a follower is meant to stop: quietly, with the shell's 130 (like tail -f).
        raise SystemExit(130) from None


@click.command()
@click.argument("statement", metavar="SQL")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="VALUE",
    help="Value for a `?` placeholder (repeatable, in order).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per row (JSON lines); blobs as hex, infinite numbers as the "
    'strings "Infinity" / "-Infinity".',
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=None,
    metavar="SECONDS",
    help="Stop the query after SECONDS (default: no limit; Ctrl-C always stops it).",
)
@click.pass_context
@handle_errors
def sql(
    ctx: click.Context,
    statement: str,
    params: tuple[str, ...],
    as_json: bool,
    as_csv: bool,
    timeout: float | None,
) -> None:
    """Run a read-only SQL query against the bus and print the rows.

    The file is opened read-only: INSERT, UPDATE, DELETE, DROP, ATTACH, VACUUM
    and writing PRAGMAs are refused. Tables: outbox, cursors; views: consumer_lag,
    runs, model_calls, decisions, tool_calls, errors (see the README).
    A query stops at Ctrl-C or after --timeout. In the table, control
    characters in values are shown escaped (\\n, \\x1b).

    \b
    Example:
      loopbus sql "SELECT event_type, count(*) AS n FROM outbox GROUP BY 1"
      loopbus sql "SELECT id, payload FROM outbox WHERE agent = ?" -p cli --json
      loopbus sql "SELECT * FROM consumer_lag" --csv > lag.csv
      loopbus sql "SELECT count(*) FROM outbox" --timeout 30
    """
    if as_json and as_csv:
        fail("choose one of --json and --csv")
    from loopbus.bus import query

    interrupt = threading.Event()
    with _SigintToFlag(interrupt):
        result = query(bus_path(ctx), statement, params, timeout_s=timeout, interrupt=interrupt)
    if as_json:
        names = _unique_columns(result.columns)
        for row in result.rows:
            record = {name: _json_value(value) for name, value in zip(names, row, strict=True)}
            click.echo(safe_json(record, allow_nan=False))
    elif as_csv:
        # Lossless into a file or a pipe; on a terminal, escapes in values are shown, not run.
        shown = printable if sys.stdout.isatty() else _same
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([shown(c) for c in result.columns])
        for row in result.rows:
            writer.writerow(["" if v is None else _csv_value(v, shown) for v in row])
    else:
        _print_table(result.columns, result.rows, empty="(no rows)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per consumer.")
@click.option(
    "--drop",
    "drop",
    multiple=True,
    metavar="NAME",
    help="Unregister consumer NAME (repeatable), so it no longer holds back prune.",
)
@click.pass_context
@handle_errors
def cursors(ctx: click.Context, as_json: bool, drop: tuple[str, ...]) -> None:
    """Show each registered consumer: last_seen_id, lag, updated_at.

    lag counts every stored event after the cursor, of any type; a consumer
    that subscribes to some types only still reaches 0 once it is caught up
    and idle (it commits past the events it skips).

    --drop NAME removes a consumer that is gone for good (a renamed agent,
    a changed parallelism) so that prune can delete what it never read.
    Stop it first: a running consumer registers again.

    \b
    Example:
      loopbus cursors
      loopbus cursors --json
      loopbus cursors --drop 'checker#1/2'
    """
    from loopbus.bus import open as open_bus

    with open_bus(bus_path(ctx), create=False) as bus:
        infos = list(bus.cursors())
        if drop:
            known = {info.consumer for info in infos}
            unknown = [name for name in dict.fromkeys(drop) if name not in known]
            if unknown:
                registered = ", ".join(sorted(known)) or "none"
                fail(
                    f"no consumer named {unknown[0]!r} (registered: {registered}); "
                    "see `loopbus cursors`"
                )
            for name in dict.fromkeys(drop):
                cursor = bus.unregister(name)
                if cursor is not None:
                    click.echo(f"dropped consumer {name} (its cursor was at {cursor})")
            return
    fields = ("consumer", "last_seen_id", "lag", "updated_at")
    if as_json:
        for info in infos:
            click.echo(safe_json({f: _json_value(getattr(info, f)) for f in fields}))
    else:
        rows = [[getattr(info, f) for f in fields] for info in infos]
        _print_table(fields, rows, empty="(no consumers)")


@click.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option(
    "--max-age",
    type=Duration(),
    default=None,
    metavar="DURATION",
    help="Also delete events older than this (7d, 12h, 30m, 3600s), even unread ones.",
)
@click.pass_context
@handle_errors
def prune(ctx: click.Context, dry_run: bool, max_age: float | None) -> None:
    """Delete events every registered consumer has already read.

    Without --max-age, only events at or below the slowest consumer's cursor
    go. With --max-age, older events go too and each consumer that loses
    unread events is reported with a warning. Ids are never reused.

    \b
    Example:
      loopbus prune --dry-run
      loopbus prune --max-age 7d
    """
    from loopbus.bus import open as open_bus
    from loopbus.bus.errors import PruneWarning

    with open_bus(bus_path(ctx), create=False) as bus, warnings.catch_warnings():
        # The report's warnings are printed below, once; the library's own PruneWarning
        # and log record would repeat them (Python prints both to stderr by default).
        warnings.simplefilter("ignore", PruneWarning)
        _silence_library_log()
        report = bus.prune(dry_run=dry_run, max_age_s=max_age)
    for warning in report.warnings:
        click.echo(f"Warning: {warning}", err=True)
    noun = "event" if report.deleted == 1 else "events"
    verb = "would be deleted" if dry_run else "deleted"
    click.echo(f"{report.deleted} {noun} {verb}")
