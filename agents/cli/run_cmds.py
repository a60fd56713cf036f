"""`loopbus run`, `loopbus agents`, `loopbus replay`, `loopbus export`: one agent run at a time.

Exit status of `run` and `replay`: 0 when the run ended `done` / the replay matched, 1 when it
ended otherwise / diverged, 2 for a usage or setup error printed as `Error: ...` (unknown agent,
missing model, workspace or recording), 130 on Ctrl-C.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from loopbus.agents.cli.common import (
    SECONDS,
    FiniteFloat,
    bus_path,
    exit_codes_epilog,
    fail,
    handle_errors,
)
from loopbus.agents.cli.sandbox_cmds import _parse_bytes
from loopbus.agents.run.events import RunEventType
from loopbus.agents.termsafe import printable, safe_json_text

_STYLE = {
    RunEventType.TASK: "bold cyan",
    RunEventType.DECISION: "green",
    RunEventType.TOOL_RESULT: "white",
    RunEventType.ERROR: "red",
    RunEventType.OUTCOME: "bold magenta",
    RunEventType.MODEL_CALL: "dim",
    RunEventType.TOOL_CALL: "dim",
    RunEventType.LLM_CALL: "dim",
}


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(event: Any) -> str:
    """One human line for a run event."""
    p = event.payload if isinstance(event.payload, dict) else {}
    match event.event_type:
        case RunEventType.TASK:
            return f"task: {p.get('task')}"
        case RunEventType.MODEL_CALL:
            from loopbus.agents.observe.progress import model_call_rates

            prefill, decode = model_call_rates(p)
            rates = ", ".join(
                f"{name} {rate:.0f} tok/s"
                for name, rate in (("prefill", prefill), ("decode", decode))
                if rate is not None
            )
            return (
                f"model: {p.get('prompt_tokens')} prompt tokens "
                f"({p.get('cached_tokens') or 0} cached) -> {p.get('completion_tokens')} "
                f"tokens, {(p.get('prefill_s') or 0) + (p.get('decode_s') or 0):.2f}s"
                + (f" ({rates})" if rates else "")
            )
        case RunEventType.DECISION:
            return f"decision: {_short(p.get('decision'))}"
        case RunEventType.TOOL_CALL:
            return f"call {p.get('tool')}"
        case RunEventType.TOOL_RESULT:
            return f"result: {_short(p.get('result'))}"
        case RunEventType.LLM_CALL:
            answer = p["raw"] if "raw" in p else p.get("error")
            return f"tool asked the model: {_short(p.get('prompt'), 60)} -> {_short(answer)}"
        case RunEventType.ERROR:
            return f"error ({p.get('kind')}): {_short(p.get('error'))}"
        case RunEventType.OUTCOME:
            detail = p.get("summary") or p.get("reason") or ""
            return f"outcome: {p.get('kind')} {_short(detail, 400)}"
    return f"published: {_short(event.payload)}"


def _printer(as_json: bool, timestamps: bool | None = None) -> Any:
    """Prints each event as it lands: a JSON line, or a human line (timestamped when stdout is
    not a terminal, e.g. in CI, unless ``timestamps`` says otherwise)."""
    from rich.console import Console
    from rich.text import Text

    from loopbus.agents.observe.progress import is_terminal, timestamp

    console = Console(highlight=False, soft_wrap=True)
    stamp = not is_terminal() if timestamps is None else timestamps

    def show(event: Any) -> None:
        if as_json:
            click.echo(safe_json_text(event.to_json()))
            return
        # Text, not markup: tool results may contain "[/bold]" and the like; printable():
        # file contents and model output may carry terminal escapes (OSC 52, clear screen).
        style = _STYLE.get(event.event_type, "yellow")
        line = printable(describe(event))
        head = f"{timestamp()} #{event.id} " if stamp else f"#{event.id} "
        console.print(Text.assemble((head, "dim"), (line, style)))

    return show


@click.command("run", epilog=exit_codes_epilog("the run ended other than `done`"))
@click.argument("agent")
@click.argument("task")
@click.option(
    "--model",
    "model_spec",
    default=None,
    metavar="SPEC",
    help="Model spec (default: the embedded SmolLM2; see `loopbus models`).",
)
@click.option(
    "--workspace",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder the agent may list and read (read-only).",
)
@click.option("--max-turns", type=click.IntRange(1), default=12, show_default=True)
@click.option(
    "--budget",
    type=FiniteFloat(0.01, 1.0),
    default=0.4,
    show_default=True,
    help="Largest prompt as a fraction of the model's context window.",
)
@click.option(
    "--elide", is_flag=True, help="Drop the oldest events instead of stopping at the budget."
)
@click.option(
    "--context-window",
    type=click.IntRange(64),
    default=None,
    help="Override the model's context window (tokens).",
)
@click.option("--run-id", default=None, help="Run id (a run already on the bus is resumed).")
@click.option(
    "--sandbox-fuel",
    type=click.IntRange(min=1),
    default=None,
    help="RunPython sandbox: fuel (wasm instructions) per snippet.",
)
@click.option(
    "--sandbox-memory",
    callback=_parse_bytes,
    metavar="BYTES",
    help="RunPython sandbox: linear memory limit, e.g. 32M.",
)
@click.option(
    "--sandbox-timeout",
    type=SECONDS,
    default=None,
    help="RunPython sandbox: wall-clock seconds per snippet.",
)
@click.option("--json", "as_json", is_flag=True, help="Print events and the outcome as JSON lines.")
@click.pass_context
@handle_errors
def run(
    ctx: click.Context,
    agent: str,
    task: str,
    model_spec: str | None,
    workspace: Path | None,
    max_turns: int,
    budget: float,
    elide: bool,
    context_window: int | None,
    run_id: str | None,
    sandbox_fuel: int | None,
    sandbox_memory: int | None,
    sandbox_timeout: float | None,
    as_json: bool,
) -> None:
    """Run AGENT once on TASK, printing its event log live; exit 0 when it ends `done`.

    Every event also lands on the bus (`loopbus export RUN` turns the run into a recording).

    \b
    Example:
      loopbus run assistant "Read README.md and tell me the version of Pebble." --workspace tests/fixtures/workspace
      loopbus run coder "Sum the squares of 1..10" --max-turns 4 --json
      loopbus run coder "Count to 10" --sandbox-fuel 1000000000 --sandbox-timeout 2
    """
    from loopbus.agents.builtin import get_agent
    from loopbus.agents.run.loop import run_agent
    from loopbus.bus import open as open_bus

    spec = get_agent(agent)  # fail fast, before loading a model
    limits = {"fuel": sandbox_fuel, "memory_bytes": sandbox_memory, "wall_clock_s": sandbox_timeout}
    sandbox = None
    if any(v is not None for v in limits.values()):
        import dataclasses

        from loopbus.agents.sandbox.types import SandboxLimits

        # Each option overrides one limit of the agent's own default, not of the plain defaults.
        base = spec.sandbox or SandboxLimits()
        sandbox = dataclasses.replace(base, **{k: v for k, v in limits.items() if v is not None})
    with open_bus(bus_path(ctx)) as bus:  # a bad bus path fails before the model loads
        bus.check_writable()  # so does a read-only bus: the run's events could not land
        runtime = _load_with_progress(model_spec, context_window, quiet=as_json)
        outcome = run_agent(
            agent,
            task,
            runtime=runtime,
            bus=bus,
            workspace=workspace,
            max_turns=max_turns,
            budget=budget,
            elide=elide,
            run_id=run_id,
            on_event=_printer(as_json),
            sandbox=sandbox,
        )
    if as_json:
        click.echo(safe_json_text(outcome.model_dump_json()))
    else:
        detail = printable(outcome.summary or outcome.reason or "")
        click.secho(
            f"{outcome.kind}: {detail}  (run {printable(outcome.run_id)})",
            bold=True,
            fg="green" if outcome.ok else "red",
        )
    sys.exit(0 if outcome.ok else 1)


def _load_with_progress(spec: str | None, context_window: int | None, *, quiet: bool) -> Any:
    """Load the model, saying so on stderr ("loading model default ..." then "loaded in 1.2s")
    unless ``quiet`` (--json: machine output only); timestamped when stderr is no terminal."""
    from loopbus.agents.observe.progress import is_terminal, stamped
    from loopbus.models import load_runtime

    def note(text: str) -> None:
        if not quiet:
            plain = not is_terminal(sys.stderr)
            click.secho(stamped(text) if plain else text, err=True, dim=True)

    note(f"loading model {printable(spec or 'default')} ...")
    started = time.monotonic()
    runtime = load_runtime(spec, context_window=context_window)
    note(
        f"loaded in {time.monotonic() - started:.1f}s ({runtime.context_window} tokens of context)"
    )
    return runtime


@click.command("agents")
@click.argument("references", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def agents_cmd(references: tuple[str, ...], as_json: bool) -> None:
    """List the available agents, their BAML functions and tools.

    REFERENCES (optional): your own agents to describe too, as module:attr of an Agent or an
    entry-point name in the loopbus.agents group.

    \b
    Example:
      loopbus agents
      loopbus agents my_agents.counter:counter
    """
    from loopbus.agents.builtin import list_agents

    agents = list_agents(references)  # an unknown reference is an Error: ... (exit 2)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": a.name,
                        "function": a.function,
                        "tools": list(a.tools),
                        "description": a.description,
                    }
                    for a in agents
                ],
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("agent", "function", "tools", "description")
    for a in agents:
        table.add_row(a.name, a.function, ", ".join(a.tools), a.description)
    Console().print(table)


@click.command(
    "replay", epilog=exit_codes_epilog("the replay diverged (the diff of the first divergence)")
)
@click.argument("source")
@click.option(
    "--workspace",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Workspace to re-run the tools on (default: the recorded one).",
)
@click.option("--verbose", "-v", is_flag=True, help="Print the replayed events.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@handle_errors
def replay(
    ctx: click.Context, source: str, workspace: Path | None, verbose: bool, as_json: bool
) -> None:
    """Re-run a recorded run (a run id on the bus, or an exported FILE) without a model.

    Recorded model outputs are replayed, tools run again; exit 0 when every decision and tool
    result matches, else 1 with a diff of the first divergence.

    \b
    Example:
      loopbus replay tests/runs/smollm2_version.xml --workspace tests/fixtures/workspace
      loopbus replay assistant-3f2a9c1d0b4e
    """
    from loopbus.agents.run.replay import load_recording
    from loopbus.agents.run.replay import replay as do_replay

    recording = load_recording(source, bus_path=bus_path(ctx))
    report = do_replay(
        recording,
        workspace=workspace,
        on_event=_printer(False) if verbose and not as_json else None,
    )
    if as_json:
        click.echo(safe_json_text(report.model_dump_json()))
    elif report.ok:
        click.secho(
            f"replay of {printable(report.run_id)} matches ({report.model_calls} model calls)",
            fg="green",
        )
    else:
        # The diff quotes recorded file contents and model output: escapes shown, lines kept.
        click.secho(printable(report.diff or "replay diverged", keep_newlines=True), fg="red")
    sys.exit(0 if report.ok else 1)


@click.command("export")
@click.argument("run_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.pass_context
@handle_errors
def export(ctx: click.Context, run_id: str, output: Path | None) -> None:
    """Write run RUN_ID as a self-contained XML recording (for `loopbus replay` and CI fixtures).

    \b
    Example:
      loopbus export assistant-3f2a9c1d0b4e > tests/runs/my_run.xml
    """
    from loopbus.agents.run.replay import export_run
    from loopbus.bus import open as open_bus

    with open_bus(bus_path(ctx), create=False) as bus:
        text = export_run(bus, run_id)
    if output is None:
        # Redirected, the recording is written as it is; on a terminal, escapes that recorded
        # file contents or model output carry are shown, not run.
        click.echo(printable(text, keep_newlines=True) if sys.stdout.isatty() else text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")
