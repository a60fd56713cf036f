"""Chain commands: `loopbus agent NAME` (one agent process) and `loopbus up` (the whole chain)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from loopbus.agents.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    SECONDS,
    bus_path,
    exit_codes_epilog,
    fail,
    handle_errors,
)

DEFAULT_CONFIG = "loopbus.toml"
STATUS_EVERY = 15.0  # seconds between plain status lines when there is no live view
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


@click.command(
    "agent",
    epilog="\b\nExit status:\n"
    "  0    stopped by SIGTERM (how `loopbus up` stops it) or idle (--exit-when-idle)\n"
    "  2    usage or setup error (`Error: ...`)\n"
    "  3    configuration error: `loopbus up` does not restart it\n"
    "  130  interrupted (Ctrl-C)\n"
    "  other  a crash: `loopbus up` restarts it with backoff",
)
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
    type=SECONDS,
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
    from loopbus.agents.chains.config import ConfigError, load_config
    from loopbus.agents.chains.supervisor import FATAL_EXIT
    from loopbus.agents.chains.worker import parse_instance, serve_agent

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
        raise SystemExit(EXIT_INTERRUPTED) from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM: a requested stop (a service manager, `kill`), so `up` exits 0, not 130."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


@click.command(
    "up",
    epilog=exit_codes_epilog(
        "an agent crashed too often, or --until-idle: the chain was not idle in time",
        ok="stopped by SIGTERM, or --until-idle: the chain went idle",
    ),
)
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@_override_options
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit 0 once no agent has an unhandled event and every process waits.",
)
@click.option(
    "--timeout",
    type=SECONDS,
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
    "--live/--no-live",
    default=None,
    help="Live status table (default: when stdout is a terminal); else plain timestamped lines.",
)
@click.option(
    "--status-every",
    type=SECONDS,
    default=STATUS_EVERY,
    show_default=True,
    metavar="SECONDS",
    help="Without the live view: print every process's status this often.",
)
@click.option(
    "--share",
    default=None,
    metavar="K/M",
    help="Run only share K of M of the chain's instances (every M-th, from K): one `up` "
    "per host on a shared bus (--bus postgresql://...).",
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
    status_every: float,
    share: str | None,
) -> None:
    """Start every agent of a chain as its own process and supervise them.

    Shows each process's state live, restarts a crashed agent with backoff, gives up after
    repeated crashes and stops everything on Ctrl-C / SIGTERM. Feed the chain with
    `loopbus publish`; logs are in BUS.agents/. Outside a terminal (CI, a pipe) it prints
    plain timestamped lines instead of the live table: one per run outcome and a status
    line every --status-every seconds.

    \b
    Example:
      loopbus --bus review.db up agents/examples/review.toml &
      loopbus --bus review.db publish scan.request '{}'
    \b
      loopbus up agents/examples/review.toml --workspace ~/src/project --until-idle
    """
    import signal

    from loopbus.agents.chains.config import check_registry, load_config
    from loopbus.agents.chains.supervisor import parse_share
    from loopbus.agents.observe.progress import is_terminal

    try:
        split = parse_share(share) if share else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--share") from None

    config = load_config(config_path or _config_default()).with_overrides(
        workspace=Path(workspace) if workspace else None,
        output=Path(output) if output else None,
        model=model,
    )
    check_registry(config)
    # Like Ctrl-C, SIGTERM unwinds through the supervisor's cleanup; unlike it, it exits 0.
    signal.signal(signal.SIGTERM, _on_sigterm)
    path = bus_path(ctx)
    import loopbus.bus as loopbus

    with loopbus.open(path) as bus:  # a bus the agents cannot write fails here, not in a loop
        bus.check_writable()
    show_live = is_terminal() if live is None else live
    try:
        finished = supervise(
            config,
            path,
            until_idle=until_idle,
            timeout=timeout,
            max_crashes=max_crashes,
            live=show_live,
            status_every=status_every,
            share=split,
        )
    except _Terminated:
        click.echo("stopped all agents")
        return
    except KeyboardInterrupt:
        click.echo("stopped all agents")
        raise SystemExit(EXIT_INTERRUPTED) from None
    if until_idle and not finished:
        fail(
            f"the chain was not idle after {timeout} s; see the logs in {path}.agents/",
            EXIT_FAILED,
        )
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
    status_every: float = STATUS_EVERY,
    share: tuple[int, int] | None = None,
) -> bool:
    """Run a Supervisor with a live rich view, or plain timestamped lines (`loopbus.agents.observe.progress`:
    supervisor messages, one line per run outcome, a status line every ``status_every`` s);
    returns True when idle."""
    from loopbus.agents.chains.supervisor import Supervisor

    if not live:
        from loopbus.agents.observe.progress import ChainProgress

        progress = ChainProgress(path, click.echo, every=status_every)
        plain = Supervisor(config, path, max_crashes=max_crashes, log=progress.log, share=share)  # type: ignore[arg-type]
        try:
            return plain.run(until_idle=until_idle, timeout=timeout, tick=progress)
        finally:
            progress.finish(plain)

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from loopbus.agents.chains.view import render
    from loopbus.agents.termsafe import printable

    console = Console()
    started = time.monotonic()
    lines: list[str] = []
    sup = Supervisor(config, path, max_crashes=max_crashes, log=lines.append, share=share)  # type: ignore[arg-type]
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
