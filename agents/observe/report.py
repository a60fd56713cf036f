"""`loopbus report`: one self-contained HTML page about a run or a whole chain.

The page has no scripts and fetches nothing: inline CSS and inline SVG only, so it can be mailed,
attached to a CI job or opened offline. It shows

* a timeline on a time axis: for a chain, one lane per agent with a bar per run (runs that
  overlap, e.g. parallel instances, stack in sub-lanes), coloured by outcome; for one run, its
  turns (model time and tool time);
* the context fill of every model call (prompt tokens / context window) per turn, against the
  run's budget line (40% by default);
* a table of the runs, or of the run's turns.

Every string from the bus is HTML-escaped (:func:`html.escape`): tasks, tool results and model
output are untrusted.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from loopbus.agents.observe.runs import (
    Timeline,
    list_runs,
    load_timeline,
    load_timelines,
    parse_time,
    seconds_between,
)

# Colours (also what the browser tests look for in the screenshots).
OUTCOME_COLOURS = {
    "done": "#2ca02c",
    "failed": "#d62728",
    "budget_exceeded": "#ff7f0e",
    "max_turns": "#9467bd",
    "running": "#1f77b4",
}
FILL_COLOUR = "#1f77b4"
BUDGET_COLOUR = "#d62728"
MODEL_COLOUR = "#8c564b"
TOOL_COLOUR = "#17becf"
AGENT_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: #555; margin: 0 0 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e5e5e5;
         vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.outcome { display: inline-block; padding: 0 6px; border-radius: 3px; color: #fff; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
            vertical-align: -1px; }
code, pre { font: 12px/1.4 ui-monospace, monospace; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; max-height: 8em;
      overflow: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""

_MAX_CELL = 600  # characters of a result / task shown in a table cell


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _short(value: Any, limit: int = _MAX_CELL) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time(ts: str | None) -> datetime | None:
    return parse_time(ts)


def _badge(outcome: str | None) -> str:
    kind = outcome or "running"
    colour = OUTCOME_COLOURS.get(kind, "#7f7f7f")
    return f'<span class="outcome" style="background:{colour}">{_e(kind)}</span>'


def _legend(items: Iterable[tuple[str, str]]) -> str:
    spans = "".join(f'<span><i style="background:{c}"></i>{_e(name)}</span>' for name, c in items)
    return f'<p class="legend">{spans}</p>'


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        # No network, no scripts: a page that cannot load anything or run anything.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


# --------------------------------------------------------------------------- SVG pieces


class _Axis:
    """Maps timestamps to x pixels between ``left`` and ``right``."""

    def __init__(self, start: datetime, end: datetime, left: float, right: float) -> None:
        self.start, self.left, self.right = start, left, right
        self.span = max((end - start).total_seconds(), 1e-3)

    def x(self, when: datetime) -> float:
        offset = (when - self.start).total_seconds()
        return self.left + (self.right - self.left) * offset / self.span

    def ticks(self, y: float, height: float) -> str:
        parts = []
        for i in range(6):
            seconds = self.span * i / 5
            x = self.left + (self.right - self.left) * i / 5
            parts.append(
                f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + height}" stroke="#eee"/>'
                f'<text x="{x:.1f}" y="{y + height + 14}" '
                f'text-anchor="{"end" if i == 5 else "middle"}">'
                f"+{seconds:.3g}s</text>"
            )
        return "".join(parts)


def _stack(spans: Sequence[tuple[datetime, datetime, Any]]) -> list[tuple[int, Any]]:
    """Assign overlapping spans to sub-lanes (greedy, in start order)."""
    ends: list[datetime] = []
    placed = []
    for start, end, item in sorted(spans, key=lambda s: s[0]):
        for lane, last in enumerate(ends):
            if last <= start:
                ends[lane] = end
                placed.append((lane, item))
                break
        else:
            ends.append(end)
            placed.append((len(ends) - 1, item))
    return placed


def chain_timeline_svg(timelines: Sequence[Timeline], width: int = 1100) -> str:
    """Lanes per agent, one bar per run on a shared time axis, coloured by outcome."""
    runs = []
    for t in timelines:
        start = _time(t.started_at)
        if start is None:
            continue
        end = _time(t.ended_at) or _time(_last_ts(t)) or start
        runs.append((t, start, max(end, start)))
    if not runs:
        return "<p>No runs on this bus.</p>"
    first = min(r[1] for r in runs)
    last = max(r[2] for r in runs)
    left, right, row_h = 150, width - 20, 18
    axis = _Axis(first, last, left, right)
    agents = sorted({t.agent for t, _, _ in runs})
    rows: list[str] = []
    y = 10
    for agent in agents:
        spans = [(s, e, t) for t, s, e in runs if t.agent == agent]
        placed = _stack(spans)
        lanes = max(lane for lane, _ in placed) + 1
        height = lanes * row_h
        rows.append(
            f'<rect x="0" y="{y}" width="{width}" height="{height}" fill="#fafafa"/>'
            f'<text x="8" y="{y + 13}">{_e(agent)}</text>'
        )
        for lane, t in placed:
            s, e = _time(t.started_at), _time(t.ended_at) or _time(_last_ts(t))
            x0 = axis.x(s)  # type: ignore[arg-type]
            x1 = max(axis.x(e or s), x0 + 3)  # type: ignore[arg-type]
            kind = t.kind
            colour = OUTCOME_COLOURS.get(kind, "#7f7f7f")
            tip = f"{t.run_id}: {kind}, {len(t.turns)} turns — {_short(t.task, 200)}"
            rows.append(
                f'<rect class="run" x="{x0:.1f}" y="{y + lane * row_h + 2}" '
                f'width="{x1 - x0:.1f}" height="{row_h - 4}" fill="{colour}" rx="2">'
                f"<title>{_e(tip)}</title></rect>"
            )
        y += height + 4
    total = y + 20
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total}" '
        f'role="img" aria-label="runs per agent on a time axis">'
        f"{axis.ticks(0, y)}{''.join(rows)}</svg>" + _legend(OUTCOME_COLOURS.items())
    )


def run_timeline_svg(t: Timeline, width: int = 1100) -> str:
    """One run's turns on a time axis: the model's time (prefill + decode) then the tool's."""
    start = _time(t.started_at)
    end = _time(t.ended_at) or _time(_last_ts(t))
    if start is None or end is None or not t.turns:
        return "<p>No model calls in this run.</p>"
    left, right, row_h = 70, width - 20, 18
    axis = _Axis(start, max(end, start), left, right)
    parts: list[str] = []
    for i, turn in enumerate(t.turns):
        y = 10 + i * row_h
        called = _time(turn.started_at)  # the model call is recorded when it returns
        if called is None:
            continue
        model_s = turn.model_s or 0.0
        try:
            m0 = axis.x(called - timedelta(seconds=model_s))
        except OverflowError:  # a forged timestamp near year 1
            m0 = axis.x(called)
        m1 = max(axis.x(called), m0 + 2)
        parts.append(
            f'<text x="8" y="{y + 12}">turn {turn.number}</text>'
            f'<rect class="model" x="{m0:.1f}" y="{y + 2}" width="{m1 - m0:.1f}" '
            f'height="{row_h - 4}" fill="{MODEL_COLOUR}"><title>model {model_s:.3f}s, '
            f"{_e(turn.prompt_tokens)} prompt tokens</title></rect>"
        )
        if turn.tool is not None:
            t0 = m1
            t1 = max(t0 + 2, t0 + (axis.right - axis.left) * (turn.tool_s or 0) / axis.span)
            colour = OUTCOME_COLOURS["failed"] if turn.error else TOOL_COLOUR
            parts.append(
                f'<rect class="tool" x="{t0:.1f}" y="{y + 2}" width="{t1 - t0:.1f}" '
                f'height="{row_h - 4}" fill="{colour}"><title>{_e(turn.tool)} '
                f"{(turn.tool_s or 0):.3f}s</title></rect>"
            )
    height = 10 + len(t.turns) * row_h
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 24}" '
        f'role="img" aria-label="turns on a time axis">'
        f"{axis.ticks(0, height)}{''.join(parts)}</svg>"
        + _legend([("model", MODEL_COLOUR), ("tool", TOOL_COLOUR), ("tool error", BUDGET_COLOUR)])
    )


def fill_plot_svg(timelines: Sequence[Timeline], width: int = 1100, height: int = 260) -> str:
    """Context fill (prompt tokens / context window) per turn, one line per run (coloured by
    agent), and the budget line (the largest budget of the runs shown; each run's own is in
    its table). A run that ended budget_exceeded gets a hollow red point one turn on: the
    prompt that did not fit."""
    series = []
    for t in timelines:
        pts = [(turn.number, turn.fill) for turn in t.turns if turn.fill is not None]
        over = None
        if t.over_budget_tokens is not None and t.context_window:
            over = (len(t.turns) + 1, t.over_budget_tokens / t.context_window)
        if pts or over:
            series.append((t, pts, over))
    if not series:
        return "<p>No model calls with a known context window.</p>"
    budget = max(t.budget for t, _, _ in series)
    every = [p for _, pts, over in series for p in (*pts, *([over] if over else []))]
    top = min(1.0, max(budget * 1.25, max(f for _, f in every) * 1.1))
    turns = max(n for n, _ in every)
    left, right, up, down = 50, width - 20, 10, height - 30

    def x(n: float) -> float:
        return left + (right - left) * ((n - 1) / max(turns - 1, 1))

    def y(f: float) -> float:
        return down - (down - up) * (min(f, top) / top)

    grid = []
    for i in range(5):
        f = top * i / 4
        grid.append(
            f'<line x1="{left}" y1="{y(f):.1f}" x2="{right}" y2="{y(f):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y(f) + 4:.1f}" text-anchor="end">{f * 100:.3g}%</text>'
        )
    for n in range(1, turns + 1, max(1, turns // 12)):
        grid.append(f'<text x="{x(n):.1f}" y="{down + 16}" text-anchor="middle">{n}</text>')
    agents = sorted({t.agent for t, _, _ in series})
    colours = {a: AGENT_COLOURS[i % len(AGENT_COLOURS)] for i, a in enumerate(agents)}
    if len(agents) == 1:
        colours[agents[0]] = FILL_COLOUR
    lines = []
    for t, pts, over in series:
        colour = colours[t.agent]
        if len(pts) > 1:
            coords = " ".join(f"{x(n):.1f},{y(f):.1f}" for n, f in pts)
            lines.append(
                f'<polyline class="fill" points="{coords}" fill="none" stroke="{colour}" '
                f'stroke-width="2.5"><title>{_e(t.run_id)}</title></polyline>'
            )
        for n, f in pts:
            lines.append(
                f'<circle cx="{x(n):.1f}" cy="{y(f):.1f}" r="4" fill="{colour}">'
                f"<title>{_e(t.run_id)} turn {n}: {f:.1%}</title></circle>"
            )
        if over is not None:
            n, f = over
            if pts:
                lines.append(
                    f'<line x1="{x(pts[-1][0]):.1f}" y1="{y(pts[-1][1]):.1f}" x2="{x(n):.1f}" '
                    f'y2="{y(f):.1f}" stroke="{colour}" stroke-width="1.5" '
                    f'stroke-dasharray="3 3"/>'
                )
            lines.append(
                f'<circle class="over" cx="{x(n):.1f}" cy="{y(f):.1f}" r="5" fill="#fff" '
                f'stroke="{BUDGET_COLOUR}" stroke-width="2.5"><title>{_e(t.run_id)}: a '
                f"{t.over_budget_tokens}-token prompt, {f:.1%} of the window, did not fit"
                f"</title></circle>"
            )
    budget_line = (
        f'<line class="budget" x1="{left}" y1="{y(budget):.1f}" x2="{right}" '
        f'y2="{y(budget):.1f}" stroke="{BUDGET_COLOUR}" stroke-width="2.5" '
        f'stroke-dasharray="8 4"/><text x="{right}" y="{y(budget) - 5:.1f}" '
        f'text-anchor="end">budget {budget:.0%}</text>'
    )
    legend = [(a, colours[a]) for a in agents] + [("budget", BUDGET_COLOUR)]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="context fill per turn against the budget">'
        f"{''.join(grid)}{budget_line}{''.join(lines)}"
        f'<text x="{(left + right) / 2}" y="{height - 2}" text-anchor="middle">turn</text></svg>'
        + _legend(legend)
    )


def _last_ts(t: Timeline) -> str | None:
    if not t.events:
        return None
    last = t.events[-1]
    payload = last.payload if isinstance(last.payload, dict) else {}
    ts = payload.get("ts")
    return ts if isinstance(ts, str) else last.created_at


# --------------------------------------------------------------------------- pages


def _runs_table(timelines: Sequence[Timeline]) -> str:
    rows = []
    for t in timelines:
        kind = t.kind
        peak = max((turn.fill for turn in t.turns if turn.fill is not None), default=None)
        seconds = seconds_between(t.started_at, t.ended_at)
        rows.append(
            f"<tr><td><code>{_e(t.run_id)}</code></td><td>{_e(t.agent)}</td>"
            f"<td>{_badge(kind)}</td><td class=num>{len(t.turns)}</td>"
            f"<td class=num>{'' if peak is None else f'{peak:.1%}'}</td>"
            f"<td class=num>{'' if seconds is None else f'{seconds:.2f}s'}</td>"
            f"<td>{_e(t.started_at)}</td><td>{_e(_short(t.task, 200))}</td></tr>"
        )
    return (
        "<table><tr><th>run</th><th>agent</th><th>outcome</th><th>turns</th>"
        "<th>peak fill</th><th>time</th><th>started</th><th>task</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _turns_table(t: Timeline) -> str:
    rows = []
    for turn in t.turns:
        what = turn.result if turn.error is None else f"error: {turn.error}"
        if turn.parse_error:
            what = f"unparseable answer: {turn.parse_error}"
        rows.append(
            f"<tr><td class=num>{turn.number}</td>"
            f"<td class=num>{_e(turn.prompt_tokens)}</td>"
            f"<td class=num>{'' if turn.fill is None else f'{turn.fill:.1%}'}</td>"
            f"<td class=num>{_e(turn.completion_tokens)}</td>"
            f"<td class=num>{'' if turn.model_s is None else f'{turn.model_s:.2f}s'}</td>"
            f"<td><pre>{_e(_short(turn.decision, 300))}</pre></td>"
            f"<td><pre>{_e(_short(what))}</pre></td></tr>"
        )
    return (
        "<table><tr><th>turn</th><th>prompt tokens</th><th>fill</th><th>completion</th>"
        "<th>model</th><th>decision</th><th>result</th></tr>" + "".join(rows) + "</table>"
    )


def run_report(t: Timeline) -> str:
    """The HTML page of one run."""
    window = t.context_window
    body = (
        f"<h1>Run <code>{_e(t.run_id)}</code></h1>"
        f'<p class="meta">agent <b>{_e(t.agent)}</b> · model {_e(t.settings.get("model"))} · '
        f"{_badge(t.kind)} after {len(t.turns)} turns · started {_e(t.started_at)}"
        f" · context window {window or '?'} tokens, budget {t.budget:.0%}"
        f"{f' ({int(window * t.budget)} tokens)' if window else ''}</p>"
        f"<p><b>Task:</b> {_e(_short(t.task, 2000))}</p>"
        f"<p><b>Outcome:</b> {_e(_short(t.detail, 2000))}</p>"
        f"<h2>Turns on a time axis</h2>{run_timeline_svg(t)}"
        f"<h2>Context fill per turn</h2>{fill_plot_svg([t])}"
        f"<h2>Turns</h2>{_turns_table(t)}"
    )
    return _page(f"loopbus run {t.run_id}", body)


def chain_report(timelines: Sequence[Timeline], *, title: str = "loopbus chain") -> str:
    """The HTML page of many runs (every run on a bus: a chain)."""
    ordered = sorted(timelines, key=lambda t: t.started_at)
    agents = sorted({t.agent for t in ordered})
    body = (
        f"<h1>{_e(title)}</h1>"
        f'<p class="meta">{len(ordered)} runs of {len(agents)} agents: '
        f"{_e(', '.join(agents))}</p>"
        f"<h2>Runs per agent on a time axis</h2>{chain_timeline_svg(ordered)}"
        f"<h2>Context fill per turn</h2>{fill_plot_svg(ordered)}"
        f"<h2>Runs</h2>{_runs_table(ordered)}"
    )
    return _page(title, body)


def build_report(
    bus_path: Any,
    run_id: str | None = None,
    *,
    agent: str | None = None,
    limit: int | None = None,
) -> str:
    """The report page of ``run_id``, or of every run on the bus (``agent``: only its runs;
    ``limit``: the newest N). Reads the bus read-only; RunNotFound for an unknown run."""
    if run_id is not None:
        return run_report(load_timeline(bus_path, run_id))
    runs = list_runs(bus_path, agent=agent, limit=limit)
    timelines = load_timelines(bus_path, [r.run_id for r in runs])
    return chain_report(timelines, title=f"loopbus chain: {bus_path}")
