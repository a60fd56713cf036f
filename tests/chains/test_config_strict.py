"""Config values loopbus must refuse at load time (not at run time, not by looping forever),
and the CLI's duration options refusing nan/inf/negatives with `Error: ...`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from chain_helpers import loopbus
from click.testing import CliRunner

from loopbus.agents.chains.config import ConfigError, load_config
from loopbus.agents.cli import main


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chain.toml"
    path.write_text(text, encoding="utf-8")
    return path


AGENT = '[agents.reviewer]\nsubscribe = ["file.*", "scan.request"]\n'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('emit = "file.found"', "emit 'file.found' matches the agent's own subscription 'file.*'"),
        ('emit = "scan.request"', "matches the agent's own subscription 'scan.request'"),
        (
            "parallelism = true",
            "agents.reviewer.parallelism: Input should be a valid integer, not true",
        ),
        ("parallelism = 2.0", "parallelism: Input should be a valid integer, not 2.0"),
        ("max_turns = 3.0", "max_turns: Input should be a valid integer, not 3.0"),
        ("max_turns = -1", "max_turns: Input should be greater than or equal to 1"),
        ("max_turns = false", "max_turns: Input should be a valid integer, not false"),
        ("budget = nan", "budget: Input should be a finite number, not nan"),
        ("budget = inf", "budget: Input should be a finite number, not inf"),
        ("budget = -inf", "budget: Input should be a finite number, not -inf"),
        ("budget = true", "budget: Input should be a valid number, not true"),
        ("elide = 1", "elide: Input should be a valid boolean, not 1"),
        ("sandbox = { wall_clock_s = nan }", "wall_clock_s=nan must be between 0 and 3600"),
    ],
)
def test_lax_and_looping_values_are_refused(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"{AGENT}{line}\n"))
    assert message in str(info.value)


def test_strict_values_still_load(tmp_path: Path) -> None:
    text = (
        f'{AGENT}emit = "review.done"\nparallelism = 2\nmax_turns = 3\nbudget = 1\nelide = true\n'
    )
    agent = load_config(write(tmp_path, text)).agent("reviewer")
    assert (agent.parallelism, agent.max_turns, agent.budget, agent.elide) == (2, 3, 1.0, True)
    assert agent.emit == "review.done"


DEEP = {
    "nested arrays": f"{AGENT}x = {'[' * 100_000}{']' * 100_000}\n",
    "nested inline tables": f"{AGENT}x = {'{a = ' * 100_000}1{'}' * 100_000}\n",
    "a long dotted key": f"{AGENT}{'.'.join(['a'] * 100_000)} = 1\n",
    "a long table name": f"[agents.{'.'.join(['a'] * 100_000)}]\n",
    "a long numeric key": f"{AGENT}{'.'.join(['1'] * 100_000)} = 1\n",
}


@pytest.mark.parametrize("shape", list(DEEP))
def test_deeply_nested_toml_is_refused_cleanly(tmp_path: Path, shape: str) -> None:
    # tomllib alone raises RecursionError on the first two and needs quadratic memory for
    # the others.
    with pytest.raises(ConfigError, match="nested too deeply|dotted key or table name with"):
        load_config(write(tmp_path, DEEP[shape]))


def test_brackets_and_dots_inside_strings_and_comments_are_text(tmp_path: Path) -> None:
    dots = ".".join("abcdefghijklmnopqrstuvwxyz" * 2)  # 51 dots
    brackets = "[" * 40
    text = (
        f'{AGENT}task = "{brackets} {{payload}} {dots}"\n'
        f"budget = 0.5  # {dots} {brackets}\n"
        f"kind = '{dots}'\n"
    )
    agent = load_config(write(tmp_path, text)).agent("reviewer")
    assert agent.budget == 0.5 and agent.kind == dots


def test_a_deep_config_gives_error_not_traceback_on_the_command_line(
    tmp_path: Path, bus_file: Path
) -> None:
    cfg = write(tmp_path, DEEP["nested arrays"])
    proc = subprocess.run(
        loopbus("--bus", str(bus_file), "up", str(cfg)), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("Error: chain config"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["up", "chain.toml", "--until-idle", "--timeout", "nan"],
        ["up", "chain.toml", "--timeout", "inf"],
        ["up", "chain.toml", "--timeout", "-1"],
        ["up", "chain.toml", "--status-every", "nan"],
        ["agent", "reviewer", "--exit-when-idle", "nan"],
        ["agent", "reviewer", "--exit-when-idle", "-5"],
        ["sql", "SELECT 1", "--timeout", "nan"],
        ["sql", "SELECT 1", "--timeout", "inf"],
        ["sandbox", "-c", "print(1)", "--timeout", "nan"],
        ["run", "answer", "hi", "--sandbox-timeout", "inf"],
        ["run", "answer", "hi", "--budget", "nan"],
    ],
)
def test_duration_options_refuse_nan_inf_and_negatives(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, ["--bus", str(tmp_path / "bus.db"), *args])
    assert result.exit_code == 2, result.output
    assert "Error: Invalid value for" in result.output
    assert "not a finite number" in result.output or "is not in the range" in result.output
    assert not (tmp_path / "bus.db").exists()  # refused before anything ran


def test_an_emit_cycle_across_agents_is_refused(tmp_path: Path) -> None:
    def agent(name: str, sub: str, emit: str) -> str:
        return f'[agents.{name}]\nkind = "reviewer"\nsubscribe = ["{sub}"]\nemit = "{emit}"\n\n'

    chain = agent("a", "x.*", "y.done") + agent("b", "y.*", "z.done")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, chain + agent("c", "z.done", "x.again")))
    assert (
        "emit cycle: a emits 'y.done' which triggers b, b emits 'z.done' which triggers c, "
        "c emits 'x.again' which triggers a; every event would circulate forever"
    ) in str(info.value)
    # The same chain without the edge back loads, and so does a long one.
    assert load_config(write(tmp_path, chain + agent("c", "z.done", "w.done"))).agents
    long = "".join(agent(f"a{i}", f"s{i}", f"s{i + 1}") for i in range(150))
    assert len(load_config(write(tmp_path, long)).agents) == 150


def test_an_agent_table_cannot_rename_its_agent(tmp_path: Path) -> None:
    text = f'{AGENT}name = "other"\n'
    with pytest.raises(ConfigError, match="agents.reviewer sets name = 'other'"):
        load_config(write(tmp_path, text))
    assert load_config(write(tmp_path, f'{AGENT}name = "reviewer"\n')).agent("reviewer")
