"""The `loopbus` command line: a thin click layer over the library.

Commands live in small modules and are imported only when invoked, so bus
commands never pay for mlx, baml or wasmtime imports.
"""

from __future__ import annotations

import importlib

import click

from loopbus.agents.cli.common import exit_codes_epilog

# command name -> "module:attribute"; each module owns its commands.
COMMANDS: dict[str, str] = {
    "publish": "loopbus.agents.cli.bus_cmds:publish",
    "tail": "loopbus.agents.cli.bus_cmds:tail",
    "sql": "loopbus.agents.cli.bus_cmds:sql",
    "cursors": "loopbus.agents.cli.bus_cmds:cursors",
    "prune": "loopbus.agents.cli.bus_cmds:prune",
    "models": "loopbus.agents.cli.models_cmds:models",
    "sandbox": "loopbus.agents.cli.sandbox_cmds:sandbox",
    "run": "loopbus.agents.cli.run_cmds:run",
    "replay": "loopbus.agents.cli.run_cmds:replay",
    "export": "loopbus.agents.cli.run_cmds:export",
    "agents": "loopbus.agents.cli.run_cmds:agents_cmd",
    "agent": "loopbus.agents.cli.chain_cmds:agent",
    "up": "loopbus.agents.cli.chain_cmds:up",
    "distill": "loopbus.agents.cli.distill_cmds:distill",
    "runs": "loopbus.agents.cli.observe_cmds:runs",
    "show": "loopbus.agents.cli.observe_cmds:show",
    "report": "loopbus.agents.cli.observe_cmds:report",
    "serve": "loopbus.agents.cli.observe_cmds:serve",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    # A usage mistake (unknown option or command, bad value) keeps click's exit code 2: the
    # same code as every other usage or setup error (agents/cli/common.py).

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A command whose module is not written yet is simply absent.
            if exc.name == module_name:
                return None
            raise
        command: click.Command = getattr(module, attr)
        if command.epilog is None:  # every command documents the shared exit codes
            command.epilog = exit_codes_epilog()
        return command


# Commands that generate in process: their process restarts once with OpenBLAS preloaded.
GENERATING = frozenset({"run", "agent", "distill"})


def _command_name(args: list[str]) -> str | None:
    """The subcommand named on a command line (skipping the global options)."""
    it = iter(args)
    for arg in it:
        if arg == "--bus":
            next(it, None)
        elif not arg.startswith("-"):
            return arg
    return None


def entry() -> None:
    """Console-script entry point (``loopbus``, ``python -m loopbus.agents.cli``).

    Only here, before click dispatches, may the process re-execute itself: a process cannot
    swap its BLAS once loaded, and re-executing from inside a command would replace whatever
    called it in process (a test runner, for one).
    """
    import sys

    if _command_name(sys.argv[1:]) in GENERATING:
        from loopbus.models.blas import reexec_with_openblas

        reexec_with_openblas()
    main(prog_name="loopbus")


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=exit_codes_epilog("a run, replay, snippet or chain ran but did not succeed"),
)
@click.option(
    "--bus",
    "bus_path",
    default=None,
    metavar="PATH|URL",
    help="Bus file or URL: PATH, sqlite:///PATH or postgresql://user@host/db?schema=NAME "
    "(default: $LOOPBUS_BUS, else ./loopbus.db).",
)
@click.version_option(package_name="loopbus")
@click.pass_context
def main(ctx: click.Context, bus_path: str | None) -> None:
    """loopbus: local agents chained through a SQLite event bus.

    \b
    Example:
      loopbus publish file.found '{"path": "README.md"}'
      loopbus tail --follow
      loopbus sql "SELECT event_type, count(*) FROM outbox GROUP BY 1"
    """
    ctx.ensure_object(dict)
    ctx.obj["bus_path"] = bus_path
