"""`loopbus runs`, `show`, `report`, `serve`: see what agents did, from the bus alone.

A thin layer over :mod:`loopbus.agents.observe.runs`, :mod:`loopbus.agents.observe.report` and :mod:`loopbus.agents.observe.serve`; every
command opens the bus read-only, so it can watch a bus that agents are writing to.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from loopbus.agents.cli.common import bus_path, handle_errors
from loopbus.agents.termsafe import printable, safe_json

OUTCOMES = ("done", "budget_exceeded", "max_turns", "failed", "running")
_STYLE = {
    "done": "green",
    "failed": "red",
    "budget_exceeded": "yellow",
    "max_turns": "magenta",
    "running": "cyan",
}


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Output:
    """Prints rich renderables: styled on a terminal; plain, 200 columns wide and without
    trailing blanks into a pipe or a file."""

    def __init__(self) -> None:
        import io

        from rich.console import Console

        self.tty = sys.stdout.isatty()
        self.buffer = io.StringIO()
        self.console = (
            Console(highlight=False)
            if self.tty
            else Console(file=self.buffer, width=200, color_system=None, highlight=False)
        )

    def print(self, item: Any) -> None:
        self.console.print(item)
        if not self.tty:
            for line in self.buffer.getvalue().splitlines():
                click.echo(line.rstrip())
            self.buffer.seek(0)
            self.buffer.truncate()


def _console() -> _Output:
    return _Output()


@click.command("runs")
@click.option("--agent", default=None, help="Only runs of this agent.")
@click.option(
    "--outcome",
    type=click.Choice(OUTCOMES),
    default=None,
    help="Only runs that ended so (`running`: no outcome yet).",
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="The newest N runs (0 = all).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@click.pass_context
@handle_errors
def runs(
    ctx: click.Context, agent: str | None, outcome: str | None, limit: int, as_json: bool
) -> None:
    """List the runs on the bus, newest first: agent, outcome, turns, time, task.

    \b
    Example:
      loopbus runs
      loopbus runs --agent reviewer --outcome failed
      loopbus runs --json -n 0
    """
    from loopbus.agents.observe.runs import list_runs, seconds_between

    found = list_runs(bus_path(ctx), agent=agent, outcome=outcome, limit=limit or None)
    if as_json:
        for run in found:
            click.echo(safe_json(run.to_dict()))
        return
    if not found:
        click.echo("(no runs)")
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("run", "agent", "outcome", "turns", "time", "started", "task"):
        table.add_column(column, overflow="fold")
    for run in found:
        kind = run.outcome or "running"
        seconds = seconds_between(run.started_at, run.ended_at)
        table.add_row(
            Text(printable(run.run_id)),
            Text(printable(run.agent)),
            Text(_short(kind, 40), style=_STYLE.get(kind, "")),
            Text("" if run.turns is None else _short(run.turns, 20)),
            Text("" if seconds is None else f"{seconds:.2f}s"),
            Text(printable(run.started_at)),
            Text(_short(run.task, 80)),
        )
    _console().print(table)


def _fill_bar(fill: float | None, budget: float, width: int = 20) -> str:
    """``[#####-----|-----]``: the prompt's share of the window, ``|`` at the budget."""
    if fill is None:
        return ""
    cells = ["#" if (i + 0.5) / width <= fill else "-" for i in range(width)]
    mark = min(width - 1, int(budget * width))
    cells[mark] = "|" if cells[mark] == "-" else "!"
    return "[" + "".join(cells) + "]"


def _print_timeline(timeline: Any) -> None:
    from rich.text import Text

    console = _console()
    t = timeline
    kind = t.kind
    window = t.context_window
    model = _short(t.settings.get("model") or "?", 200)
    console.print(
        Text.assemble(
            ("run ", "bold"),
            (printable(t.run_id), "bold"),
            f"  agent {printable(t.agent)}  model {model}  ",
            (_short(kind, 60), _STYLE.get(kind, "")),
            f"  ({len(t.turns)} turns)",
        )
    )
    console.print(Text(f"task: {_short(t.task, 400)}"))
    limit = f" ({int(window * t.budget)} tokens)" if window else ""
    console.print(
        Text(f"context window {window or '?'} tokens, budget {t.budget:.0%}{limit}", style="dim")
    )
    for turn in t.turns:
        fill = "" if turn.fill is None else f" = {turn.fill:.1%} {_fill_bar(turn.fill, t.budget)}"
        model = "" if turn.model_s is None else f", {turn.model_s:.2f}s"
        elided = f", {turn.elided} events elided" if turn.elided else ""
        console.print(
            Text.assemble(
                (f"turn {turn.number}", "bold"),
                f"  {printable(turn.started_at)}  prompt {turn.prompt_tokens} tokens{fill}"
                f"  -> {turn.completion_tokens} tokens{model}{elided}",
            )
        )
        if turn.parse_error:
            console.print(Text(f"  answer refused: {_short(turn.raw)}", style="red"))
            console.print(Text(f"    {_short(turn.parse_error, 300)}", style="red"))
        if turn.decision is not None:
            console.print(Text(f"  decision: {_short(turn.decision, 300)}", style="green"))
        if turn.tool is not None:
            took = "" if turn.tool_s is None else f" ({turn.tool_s:.2f}s)"
            tool = _short(turn.tool, 80)
            if turn.error is not None:
                console.print(Text(f"  {tool} error{took}: {_short(turn.error)}", style="red"))
            elif turn.result is not None:
                console.print(Text(f"  {tool} result{took}: {_short(turn.result)}"))
            else:
                console.print(Text(f"  {tool}: no result recorded", style="yellow"))
        elif turn.error is not None and not turn.parse_error:
            console.print(Text(f"  error: {_short(turn.error)}", style="red"))
        if turn.llm_calls:
            console.print(Text(f"  the tool asked the model {turn.llm_calls} times", style="dim"))
    if t.outcome is not None:
        console.print(
            Text.assemble(
                ("outcome: ", "bold"),
                (_short(kind, 60), _STYLE.get(kind, "")),
                f"  {_short(t.detail, 600)}",
            )
        )


@click.command("show")
@click.argument("run_id", metavar="RUN")
@click.option(
    "--prompt",
    "prompt_turn",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Print the exact prompt of turn N (checked against its recorded sha256).",
)
@click.option("--json", "as_json", is_flag=True, help="The timeline (or the prompt) as JSON.")
@click.pass_context
@handle_errors
def show(ctx: click.Context, run_id: str, prompt_turn: int | None, as_json: bool) -> None:
    """Show run RUN turn by turn: decisions, tool results, tokens, time, context fill.

    Context fill is the prompt's share of the model's context window; the run's budget
    (40% by default) is marked `|` in the bar.

    \b
    Example:
      loopbus show assistant-3f2a9c1d0b4e
      loopbus show assistant-3f2a9c1d0b4e --prompt 2
      loopbus show reviewer-e12 --json
    """
    from loopbus.agents.observe.runs import load_timeline, rebuild_prompt

    timeline = load_timeline(bus_path(ctx), run_id)
    if prompt_turn is not None:
        messages = rebuild_prompt(timeline, prompt_turn)
        if as_json:
            click.echo(safe_json(messages))
            return
        for message in messages:
            click.secho(f"--- {message['role']} ---", bold=True)
            click.echo(printable(message["content"], keep_newlines=True))
        return
    if as_json:
        click.echo(safe_json(timeline.to_dict()))
        return
    _print_timeline(timeline)


@click.command("report")
@click.argument("run_id", metavar="RUN", required=False)
@click.option("--chain", is_flag=True, help="Every run on the bus (all agents) in one page.")
@click.option("--agent", default=None, help="With --chain: only this agent's runs.")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=0),
    default=0,
    help="With --chain: only the newest N runs (default: all).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the page (default: RUN.html, or chain-report.html).",
)
@click.pass_context
@handle_errors
def report(
    ctx: click.Context,
    run_id: str | None,
    chain: bool,
    agent: str | None,
    limit: int,
    output: Path | None,
) -> None:
    """Write a self-contained HTML report of RUN, or of the whole chain (--chain).

    The page has a timeline of every agent's runs on a time axis, a plot of the context
    fill per turn against the budget line and a table of the runs (or turns). It is one
    file with inline CSS and SVG: no scripts, nothing fetched from the network.

    \b
    Example:
      loopbus report assistant-3f2a9c1d0b4e
      loopbus --bus review.db report --chain -o review.html
    """
    if (run_id is None) == (not chain):
        raise click.UsageError("give either a RUN id or --chain")
    if not chain and (agent is not None or limit):
        raise click.UsageError("--agent and --limit go with --chain")
    from loopbus.agents.observe.report import build_report

    page = build_report(bus_path(ctx), run_id, agent=agent, limit=limit or None)
    if output is None:
        output = Path("chain-report.html" if chain else f"{_file_name(run_id or 'run')}.html")
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        from loopbus.agents.cli.common import fail

        fail(f"cannot write {output}: {exc.strerror or exc}")
    click.echo(str(output))


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:100] or "run"


@click.command("serve")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="TCP port on 127.0.0.1 (0: any free port).",
)
@click.pass_context
@handle_errors
def serve(ctx: click.Context, port: int) -> None:
    """Show the bus live in a browser: new events, runs and cursors, and run reports.

    Binds 127.0.0.1 only (the bus may hold anything your agents read). The page polls a
    JSON endpoint (/api/state) about once a second; Ctrl-C stops the server.

    \b
    Example:
      loopbus serve
      loopbus --bus review.db serve --port 0
    """
    from loopbus.agents.observe.serve import make_server

    server = make_server(bus_path(ctx), port=port)
    host, bound = server.server_address[:2]
    click.echo(f"serving {bus_path(ctx)} at http://{host}:{bound}/ (Ctrl-C to stop)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
