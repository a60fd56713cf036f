"""Chain commands: `loopbus agent NAME` (one agent process) and `loopbus up` (the whole chain)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agents.cli.common import bus_path, fail, handle_errors

DEFAULT_CONFIG = "loopbus.toml"
F = TypeVar("F", bound=Callable[..., Any])


def _config_default() -> str:
    return os.environ.get("LOOPBUS_CONFIG") or DEFAULT_CONFIG


def _override_options(fn: F) -> F:
    """--workspace / --output / --model: the chain-config overrides `agent` and `up` share."""
    fn = click.option("--model", default=None, help="Override the chain's model spec.")(fn)
    fn = click.option(
        "--output",
        type=click.Path(file_okay=False),
        default=None,
        help="Override the chain's output folder.",
    )(fn)
    return click.option(
        "--workspace",
        type=click.Path(file_okay=False, exists=True),
        default=None,
        help="Override the chain's workspace folder.",
    )(fn)


@click.command("agent")
@click.argument("name")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Chain config TOML (default: $LOOPBUS_CONFIG, else ./loopbus.toml).",
)
@click.option(
    "--instance",
    default=None,
    metavar="I/N",
    help="Run instance I of N (events with id % N == I; default 0/1: all events).",
)
@_override_options
@click.option(
    "--exit-when-idle",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Exit after this many seconds without events.",
)
@click.option("--status-file", type=click.Path(dir_okay=False), default=None, hidden=True)
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.pass_context
@handle_errors
def agent(
    ctx: click.Context,
    name: str,
    config_path: str | None,
    instance: str | None,
    workspace: str | None,
    output: str | None,
    model: str | None,
    exit_when_idle: float | None,
    status_file: str | None,
    parent_pid: int | None,
) -> None:
    """Run one agent of a chain as a long-lived process.

    It resumes its unfinished runs, then consumes its subscriptions through its own cursor
    (consumer NAME, or NAME#I/N with parallel instances), runs the agent loop per event and
    commits the cursor once the event's run has a terminal outcome. Stop it with Ctrl-C.
    A configuration error prints `Error: ...` and exits 3, which tells `loopbus up` not to
    restart it.

    \b
    Example:
      loopbus --bus review.db agent reviewer --config agents/examples/review.toml
    """
    from agents.config import ConfigError, load_config
    from agents.supervisor import FATAL_EXIT
    from agents.worker import parse_instance, serve_agent

    try:
        config = load_config(config_path or _config_default()).with_overrides(
            workspace=Path(workspace) if workspace else None,
            output=Path(output) if output else None,
            model=model,
        )
        config.agent(name)
        parsed = parse_instance(instance) if instance else None
    except (ConfigError, ValueError) as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(FATAL_EXIT) from None
    try:
        serve_agent(
            config,
            name,
            bus_path(ctx),
            instance=parsed,
            status_file=Path(status_file) if status_file else None,
            parent_pid=parent_pid,
            idle_exit=exit_when_idle,
        )
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(FATAL_EXIT) from None
    except KeyboardInterrupt:
        raise SystemExit(0) from None


@click.command("up")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@_override_options
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit 0 once no agent has an unhandled event and every process waits.",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Stop and exit 1 if still running after this many seconds.",
)
@click.option(
    "--max-crashes",
    type=int,
    default=5,
    show_default=True,
    help="Give up when one agent process crashes this often within 60 s.",
)
@click.option(
    "--live/--no-live", default=None, help="Live status table (default: when stdout is a terminal)."
)
@click.pass_context
@handle_errors
def up(
    ctx: click.Context,
    config_path: str | None,
    workspace: str | None,
    output: str | None,
    model: str | None,
    until_idle: bool,
    timeout: float | None,
    max_crashes: int,
    live: bool | None,
) -> None:
    """Start every agent of a chain as its own process and supervise them.

    Shows each process's state live, restarts a crashed agent with backoff, gives up after
    repeated crashes and stops everything on Ctrl-C / SIGTERM. Feed the chain with
    `loopbus publish`; logs are in BUS.agents/.

    \b
    Example:
      loopbus --bus review.db up agents/examples/review.toml &
      loopbus --bus review.db publish scan.request '{}'
    \b
      loopbus up agents/examples/review.toml --workspace ~/src/project --until-idle
    """
    from agents.config import check_registry, load_config
    from agents.supervisor import install_sigterm

    config = load_config(config_path or _config_default()).with_overrides(
        workspace=Path(workspace) if workspace else None,
        output=Path(output) if output else None,
        model=model,
    )
    check_registry(config)
    install_sigterm()
    path = bus_path(ctx)
    show_live = sys.stdout.isatty() if live is None else live
    try:
        finished = supervise(
            config,
            path,
            until_idle=until_idle,
            timeout=timeout,
            max_crashes=max_crashes,
            live=show_live,
        )
    except KeyboardInterrupt:
        click.echo("stopped all agents")
        return
    if until_idle and not finished:
        fail(f"the chain was not idle after {timeout} s; see the logs in {path}.agents/")
    if until_idle:
        click.echo("chain idle: every event handled; stopped all agents")


def supervise(
    config: object,
    path: str,
    *,
    until_idle: bool,
    timeout: float | None,
    max_crashes: int = 5,
    live: bool = True,
    title: str = "",
) -> bool:
    """Run a Supervisor with a live rich view (or plain log lines); returns True when idle."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from agents.chain_view import render
    from agents.supervisor import Supervisor
    from agents.termsafe import printable

    console = Console()
    started = time.monotonic()
    if not live:
        sup = Supervisor(
            config,
            path,
            max_crashes=max_crashes,  # type: ignore[arg-type]
            log=lambda line: click.echo(f"[up] {line}"),
        )
        return sup.run(until_idle=until_idle, timeout=timeout)
    lines: list[str] = []
    sup = Supervisor(config, path, max_crashes=max_crashes, log=lines.append)  # type: ignore[arg-type]
    with Live(console=console, refresh_per_second=4, transient=False) as view:

        def tick(s: Supervisor) -> None:
            while lines:
                # Text, not markup (a crash message may hold "[/]"), escapes shown escaped.
                line = Text(f"[up] {printable(lines.pop(0))}", style="dim")
                view.console.print(line)
            view.update(render(s, title=title, elapsed=time.monotonic() - started))

        try:
            return sup.run(until_idle=until_idle, timeout=timeout, tick=tick)
        finally:
            tick(sup)
