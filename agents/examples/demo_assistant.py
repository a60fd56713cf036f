"""Offline demo of one agent run: the built-in `assistant` answers a question about a folder
with the embedded SmolLM2 model, printing its event log live; everything lands on a bus file.

    python -m loopbus.agents.examples.demo_assistant [--workspace DIR] [--question TEXT]
        [--bus FILE] [--model SPEC]

The default folder is ``agents/examples/workspace`` (shipped in the package, read only); the bus
file goes to ``./demo-out/loopbus.db`` in the current directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from loopbus.agents.cli.common import handle_errors

#: A tiny project shipped with the package (a copy of tests/fixtures/workspace).
DEFAULT_WORKSPACE = Path(__file__).resolve().parent / "workspace"
DEFAULT_QUESTION = "Read README.md and tell me the version of Pebble."


def run_demo(
    workspace: Path = DEFAULT_WORKSPACE,
    question: str = DEFAULT_QUESTION,
    bus_file: Path = Path("demo-out/loopbus.db"),
    max_turns: int = 4,
    model: str | None = None,
) -> int:
    """Run the assistant once; returns the exit status (0 when it answered)."""
    from loopbus.agents.cli.run_cmds import describe
    from loopbus.agents.examples.demo import _loopbus_command
    from loopbus.agents.run.loop import run_agent
    from loopbus.bus import SyncBus
    from loopbus.models import load_runtime

    bus_file.parent.mkdir(parents=True, exist_ok=True)
    click.secho(f"loading the model ({model or 'embedded SmolLM2-135M'}) ...", dim=True)
    started = time.monotonic()
    runtime = load_runtime(model)
    click.secho(f"loaded in {time.monotonic() - started:.1f}s", dim=True)
    click.secho(f"assistant on {workspace}: {question}", bold=True)
    with SyncBus(bus_file) as bus:
        outcome = run_agent(
            "assistant",
            question,
            runtime=runtime,
            bus=bus,
            workspace=workspace,
            max_turns=max_turns,
            on_event=lambda e: click.echo(f"  #{e.id} {describe(e)}"),
        )
    click.secho(
        f"\n{outcome.kind}: {outcome.summary or outcome.reason}",
        bold=True,
        fg="green" if outcome.ok else "yellow",
    )
    exe = _loopbus_command()  # .venv/bin/loopbus when the venv is not on PATH
    click.echo(
        f"\nThe run is on the bus ({bus_file}); try:\n"
        f'  {exe} --bus {bus_file} sql "SELECT id, event_type, '
        f"substr(payload, 1, 80) FROM outbox WHERE run_id = '{outcome.run_id}'\"\n"
        f"  {exe} --bus {bus_file} export {outcome.run_id} > run.xml\n"
        f"  {exe} replay run.xml"
    )
    return 0 if outcome.ok else 1


@click.command()
@click.option(
    "--workspace",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_WORKSPACE,
    show_default="the shipped example workspace",
)
@click.option("--question", default=DEFAULT_QUESTION, show_default=True)
@click.option(
    "--bus",
    "bus_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("demo-out/loopbus.db"),
    show_default=True,
)
@click.option("--model", default=None, help="Model spec (default: the embedded SmolLM2).")
@handle_errors  # a missing model or bad bus file: `Error: ...` and exit 2
def main(workspace: Path, question: str, bus_file: Path, model: str | None) -> None:
    """Ask the built-in assistant a question about a folder, offline."""
    raise SystemExit(run_demo(workspace, question, bus_file, model=model))


if __name__ == "__main__":
    from loopbus.models.blas import reexec_with_openblas

    reexec_with_openblas()  # in-process generation: restart once with the fast float32 BLAS
    main()
