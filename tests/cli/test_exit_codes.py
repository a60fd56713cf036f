"""Exit codes: 0 success, 1 ran but did not succeed, 2 usage/setup error, 130 Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from loopbus.agents.cli import COMMANDS, LazyGroup, main
from loopbus.agents.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    exit_code_for,
    handle_errors,
)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_documents_its_exit_codes(name: str) -> None:
    command = LazyGroup._load(name)
    if command is None:  # a command whose module is not written yet
        pytest.skip(f"{name} is not available")
    paths = [[name]]
    if isinstance(command, click.Group):  # `loopbus models import`, ...
        paths += [[name, sub] for sub in command.list_commands(click.Context(command))]
    for path in paths:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, result.output
        epilog = result.output.split("Exit status:", 1)[1]
        for code in ("0 ", "2 ", "130 "):
            assert f"\n    {code}" in epilog or f"\n  {code}" in epilog, (path, epilog)


def test_the_top_level_help_documents_them_too() -> None:
    text = CliRunner().invoke(main, ["--help"]).output
    assert "Exit status:" in text and "130  interrupted (Ctrl-C)" in text


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option"],
        ["no-such-command"],
        ["tail", "--limit", "many"],
        ["run", "nobody", "a task"],  # unknown agent: fails before any model loads
        ["run", "assistant", "x", "--workspace", "/nonexistent-loopbus"],
        ["replay", "/nonexistent-loopbus/run.xml"],
        ["export", "assistant-nope"],
        ["up", "/nonexistent-loopbus/chain.toml"],
        ["agents", "extra-argument"],
    ],
)
def test_usage_and_setup_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    bus = tmp_path / "bus.db"
    result = CliRunner().invoke(main, ["--bus", str(bus), *args])
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.output)
    assert "Error: " in result.stderr and "Traceback" not in result.output
    assert not bus.exists()  # nothing was written


def test_a_snippet_that_fails_exits_1() -> None:
    result = CliRunner().invoke(main, ["sandbox", "-c", "1 / 0"])
    assert result.exit_code == EXIT_FAILED and "ZeroDivisionError" in result.output


def test_library_errors_that_are_not_user_mistakes() -> None:
    from loopbus.agents.chains.supervisor import ChainGaveUp
    from loopbus.agents.errors import AgentError
    from loopbus.bus.errors import BusError, QueryInterrupted, QueryTimeout

    assert exit_code_for(ChainGaveUp("crashed 5 times")) == EXIT_FAILED
    assert exit_code_for(QueryTimeout("timed out")) == EXIT_FAILED
    assert exit_code_for(QueryInterrupted("interrupted")) == EXIT_INTERRUPTED
    assert exit_code_for(AgentError("bad config")) == EXIT_USAGE
    assert exit_code_for(BusError("not a bus")) == EXIT_USAGE


def test_handle_errors_maps_ctrl_c_to_130() -> None:
    @click.command()
    @handle_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    result = CliRunner().invoke(interrupted, [])
    assert result.exit_code == EXIT_INTERRUPTED and "Traceback" not in result.output
