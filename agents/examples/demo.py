"""`make demo`: the review chain, offline, with the embedded SmolLM2 model.

Three agents run as separate OS processes, coupled only by the bus (``agents/examples/
review.toml``): ``scanner`` publishes one ``file.found`` per file of a folder, ``reviewer``
(two processes) checks each file and publishes ``finding`` events, ``reporter`` re-renders
``report.md`` after each review. The demo starts the chain with ``loopbus up``'s supervisor,
shows it live, waits until every event is handled, then prints the report and a few
``loopbus sql`` queries to inspect what happened.

The bus tour that used to be the demo is ``python -m loopbus.agents.examples.bus_tour``.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from pathlib import Path

import click

from loopbus.agents.cli.common import handle_errors

EXAMPLES = Path(__file__).resolve().parent
CONFIG = EXAMPLES / "review.toml"
FIXTURE = EXAMPLES / "fixture_project"

QUERIES = (
    (
        "events per agent and type",
        "SELECT agent, event_type, count(*) AS n FROM outbox GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "the findings",
        "SELECT json_extract(payload, '$.path') AS file, json_extract(payload, '$.message') AS "
        "finding FROM outbox WHERE event_type = 'finding' ORDER BY id",
    ),
    (
        "how each run ended",
        "SELECT run_id, json_extract(payload, '$.kind') AS outcome, json_extract(payload, "
        "'$.summary') AS summary FROM outbox WHERE event_type = 'run.outcome' ORDER BY id",
    ),
    (
        "model time per agent",
        "SELECT agent, count(*) AS calls, sum(json_extract(payload, '$.completion_tokens')) AS "
        "tokens, round(sum(json_extract(payload, '$.prefill_s') + json_extract(payload, "
        "'$.decode_s')), 1) AS seconds FROM outbox WHERE event_type = 'run.model_call' GROUP BY 1",
    ),
)


def _loopbus_command() -> str:
    """`loopbus` when it is on PATH, else the venv's script (after `make demo` it usually isn't)."""
    script = Path(sys.executable).parent / "loopbus"
    if shutil.which("loopbus") == str(script) or not script.exists():
        return "loopbus"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return shlex.quote(str(script))


def _fresh_bus(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(f"{path}.agents", ignore_errors=True)


@click.command()
@click.option(
    "--folder",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=FIXTURE,
    show_default="the shipped fixture project",
    help="The folder to review.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Where the bus file, the agents' logs and report.md go.",
)
@click.option("--model", default=None, help="Model spec (default: the embedded SmolLM2).")
@click.option(
    "--timeout", type=float, default=900, show_default=True, help="Give up after this many seconds."
)
@click.option(
    "--live/--no-live", default=None, help="Live status table (default: when stdout is a terminal)."
)
@handle_errors  # `Error: ...`: 2 for a setup error, 1 when the chain gave up (agents/cli/common)
def main(folder: Path, out: Path, model: str | None, timeout: float, live: bool | None) -> None:
    """Run the review chain over FOLDER offline and print the report.

    In a terminal the chain is shown live; otherwise (CI, a pipe) as plain timestamped lines:
    one per run outcome and a status line of every agent process every 15 s. Exit status:
    0 the chain finished, 1 it gave up or did not finish in --timeout, 2 a setup error,
    130 Ctrl-C.

    \b
    Example:
      python -m loopbus.agents.examples.demo
      python -m loopbus.agents.examples.demo --folder ~/src/project --out /tmp/review
    """
    from loopbus.agents.chains.config import check_registry, load_config
    from loopbus.agents.cli.chain_cmds import supervise
    from loopbus.agents.cli.common import EXIT_FAILED, EXIT_INTERRUPTED
    from loopbus.agents.observe.progress import is_terminal
    from loopbus.bus import SyncBus

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bus_path = out / "demo.db"
    _fresh_bus(bus_path)
    config = load_config(CONFIG).with_overrides(workspace=folder, output=out, model=model)
    check_registry(config)
    click.secho("loopbus demo: a chain of agent processes reviews a folder, offline", bold=True)
    click.echo(
        f"  folder: {folder.resolve()}\n  bus:    {bus_path}\n  agents: "
        + ", ".join(f"{a.name} x{a.parallelism}" for a in config.agents.values())
    )
    if config.model in (None, "", "default"):
        from loopbus.models.embedded import ensure_default_model

        click.echo("  model:  embedded SmolLM2-135M-Instruct (imported once on first use)")
        ensure_default_model()  # before the agents start, so they do not race to import it
    with SyncBus(bus_path) as bus:
        bus.publish("scan.request", {"root": str(folder.resolve())}, agent="demo")
    started = time.monotonic()
    show_live = is_terminal() if live is None else live
    try:
        idle = supervise(
            config,
            str(bus_path),
            until_idle=True,
            timeout=timeout,
            live=show_live,
            title="loopbus demo: review chain",
        )
    except KeyboardInterrupt:
        click.echo("stopped")
        raise SystemExit(EXIT_INTERRUPTED) from None
    elapsed = time.monotonic() - started
    if not idle:
        click.echo(
            f"Error: the chain did not finish in {timeout:.0f} s; logs in {bus_path}.agents/",
            err=True,
        )
        raise SystemExit(EXIT_FAILED)
    report = out / "report.md"
    click.secho(f"\nchain finished in {elapsed:.0f} s; every event handled.", bold=True)
    if report.is_file():
        click.echo("\n" + report.read_text(encoding="utf-8"))
    click.secho(f"report: {report}", bold=True)
    click.echo("\nInspect the run with read-only SQL, for example:")
    bus_arg = shlex.quote(str(bus_path))
    exe = _loopbus_command()
    queries = list(QUERIES)
    with SyncBus(bus_path) as bus:
        found = bus.events(types=["file.found"], limit=1)
    if found:
        fid = found[0].id
        queries.append(
            (
                f"one file's story: event {fid}, the run it triggered and what it published",
                f"SELECT id, agent, event_type, run_id, caused_by FROM outbox WHERE id = {fid} "
                f"OR run_id = 'reviewer-e{fid}' OR caused_by = {fid} ORDER BY id",
            )
        )
    for title, sql in queries:
        # the queries hold no double quotes, backslashes or $names: safe inside "..."
        click.echo(f'  # {title}\n  {exe} --bus {bus_arg} sql "{sql}"')
    click.echo(f"  # or everything, in order: {exe} --bus {bus_arg} tail --since 0")


if __name__ == "__main__":
    main()
