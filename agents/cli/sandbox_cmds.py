"""`loopbus sandbox`: run one snippet of Python in the MicroPython/WASI sandbox."""

from __future__ import annotations

import json
import os
import re
import stat
import sys

import click

from loopbus.agents.cli.common import EXIT_FAILED, SECONDS, fail, handle_errors

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.I)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _parse_bytes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    match = _SIZE.match(value)
    if not match:
        raise click.BadParameter(
            f"{value!r} is not a size; use bytes or a suffix like 64M or 512KiB"
        )
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _read_script(path: str) -> str:
    """The text of script ``path``; `Error: ...` for anything but a readable regular file
    (a FIFO or a device is refused before it is read: reading one can block forever)."""
    try:
        # O_NONBLOCK: even opening a FIFO with no writer blocks; fstat then decides on the
        # opened file (no race with a file swapped after a check by name).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            fail(f"{path} is a directory; give a script file, -c CODE or - for stdin")
        fail(
            f"{path} is not a regular file (a FIFO, socket or device); give a script file, "
            "or pipe it in with - for stdin"
        )
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror or exc}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"{path} is not UTF-8 text")


@click.command("sandbox")
@click.option("-c", "code", metavar="CODE", help="Code to run (instead of FILE).")
# A path, not click.File: click opens the file while parsing, and opening a FIFO blocks.
@click.argument("file", type=click.Path(dir_okay=True, allow_dash=True), required=False)
@click.option(
    "--mount",
    type=click.Path(exists=True, file_okay=False),
    help="Directory mounted read-only at /input (and readable with read(path)).",
)
@click.option(
    "--fuel", type=click.IntRange(min=1), help="Fuel (wasm instructions) for the snippet."
)
@click.option(
    "--memory", callback=_parse_bytes, metavar="BYTES", help="Linear memory limit, e.g. 64M."
)
@click.option("--timeout", type=SECONDS, help="Wall-clock limit in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@handle_errors
def sandbox(
    code: str | None,
    file: str | None,
    mount: str | None,
    fuel: int | None,
    memory: int | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run Python code in the MicroPython/WASI sandbox and print its output.

    No network, no host files except --mount (read-only at /input). The value of a
    final expression is printed like in a REPL. Exits 1 with `Error: ...` when the
    code raises or hits a limit (fuel, memory, time).

    \b
    Examples:
      loopbus sandbox -c "print(sum(range(10)))"
      loopbus sandbox --mount ./docs -c "len(read('README.md'))"
      loopbus sandbox script.py --timeout 2 --json
      echo "import json; json.dumps({'a': 1})" | loopbus sandbox -
    """
    if (code is None) == (file is None):
        fail("give either -c CODE or a FILE (use - for stdin)")
    if code is not None:
        source = code
    elif file == "-":
        try:
            source = sys.stdin.read()
        except UnicodeDecodeError:
            fail("stdin is not UTF-8 text")
    else:
        source = _read_script(str(file))

    from loopbus.agents.sandbox.core import Sandbox, SandboxLimits

    overrides = {"fuel": fuel, "memory_bytes": memory, "wall_clock_s": timeout}
    limits = SandboxLimits(**{k: v for k, v in overrides.items() if v is not None})
    with Sandbox(limits, workspace=mount) as box:
        result = box.run(source)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        if result.stdout:
            click.echo(result.stdout, nl=False)
        if result.stderr:
            click.echo(result.stderr, nl=False, err=True)
        if result.result is not None:
            click.echo(result.result)
    if result.error is not None:
        if not as_json and not result.trapped:
            click.echo(result.error, nl=False, err=True)
        if result.trapped:  # the note about the reset session is for agents, not for a one-shot run
            fail(
                result.error.split(" The sandbox session was reset")[0].removeprefix(
                    "Sandbox stopped: "
                ),
                EXIT_FAILED,  # the snippet ran and failed: not a usage error
            )
        fail(result.error.strip().splitlines()[-1], EXIT_FAILED)
    sys.stdout.flush()
