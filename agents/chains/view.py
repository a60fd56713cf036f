"""Rendering of a running chain for `loopbus up` and the demo: a rich table plus recent events."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from loopbus.agents.chains.supervisor import Supervisor
from loopbus.agents.termsafe import printable

_STATE_STYLE = {
    "running": "bold green",
    "resuming": "bold yellow",
    "idle": "dim",
    "loading model": "yellow",
    "starting": "yellow",
    "backoff": "bold red",
    "gave up": "bold white on red",
    "stopped": "dim",
}


def _short(value: Any, width: int) -> Text:
    """A one-line preview as a Text: terminal escapes shown escaped, `[/]` printed literally."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = printable(" ".join(text.split()))
    return Text(text if len(text) <= width else text[: width - 1] + "…")


def _cell(value: Any) -> Text:
    # Text, never a markup string: rich would read "[/]" in a run id or agent name as a tag
    # (a closing tag with nothing to close raises MarkupError and stops the live view).
    return Text(printable(value))


def render(sup: Supervisor, *, title: str = "", elapsed: float | None = None) -> Group:
    """The status table (one row per agent process) and the last events on the bus."""
    head = title or f"chain {sup.config.name}"
    if elapsed is not None:
        head += f"  ({elapsed:.0f} s)"
    table = Table(title=Text(printable(head)), title_justify="left", expand=True)
    table.add_column("agent", no_wrap=True)
    table.add_column("pid", justify="right")
    table.add_column("state", no_wrap=True)
    table.add_column("run / event", no_wrap=True)
    table.add_column("doing", ratio=1)
    table.add_column("restarts", justify="right")
    table.add_column("handled", justify="right")
    for slot in sup.slots:
        st = slot.status
        run = st.get("run_id") or ""
        if st.get("event_id"):
            run += f" ({st.get('event_type', '')} #{st['event_id']})"
        table.add_row(
            _cell(slot.consumer),
            str(slot.pid or "-"),
            Text(printable(slot.state), style=_STATE_STYLE.get(slot.state, "")),
            _cell(run),
            _short(st.get("activity", ""), 80),
            str(slot.restarts),
            str(slot.handled),
        )
    events = Table(title="events on the bus", title_justify="left", expand=True, show_edge=False)
    events.add_column("id", justify="right")
    events.add_column("agent", no_wrap=True)
    events.add_column("type", no_wrap=True)
    events.add_column("payload", ratio=1)
    for e in list(sup.recent)[-8:]:
        events.add_row(str(e.id), _cell(e.agent), _cell(e.event_type), _short(e.payload, 90))
    counts = printable(", ".join(f"{t}: {n}" for t, n in sorted(sup.counts.items())))
    return Group(table, events, Text(counts or "(no events yet)", style="dim"))
