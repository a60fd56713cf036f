"""Chain config parsing and validation: clear, typed errors for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopbus.agents.chains.config import (
    BadSubscription,
    BadTaskTemplate,
    ConfigError,
    ModelMissing,
    UnknownAgent,
    UnknownTool,
    check_registry,
    load_config,
    render_task,
)
from loopbus.agents.errors import AgentError
from loopbus.bus import Event

EXAMPLES = Path(__file__).resolve().parents[2] / "agents" / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chain.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_examples_load_and_pass_registry_checks() -> None:
    review = load_config(EXAMPLES / "review.toml")
    assert list(review.agents) == ["scanner", "reviewer", "reporter"]
    assert review.agent("reviewer").consumers() == ["reviewer#0/2", "reviewer#1/2"]
    assert review.workspace == (EXAMPLES / "fixture_project").resolve()
    check_registry(review)
    plan = load_config(EXAMPLES / "plan_fanout.toml")
    check_registry(plan)
    assert plan.agent("worker").emit == "subgoal.answered"


def test_unknown_agent_kind(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[agents.bob]\nsubscribe = ["x"]\n'))
    with pytest.raises(UnknownAgent, match="unknown kind 'bob'.*available agents:.*reviewer"):
        check_registry(config)


def test_unknown_agent_name_in_chain(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[agents.reviewer]\nsubscribe = ["x"]\n'))
    with pytest.raises(UnknownAgent, match="agent 'nobody' is not in chain.*agents: reviewer"):
        config.agent("nobody")


def test_unknown_tool(tmp_path: Path) -> None:
    text = '[agents.reviewer]\nsubscribe = ["file.found"]\ntools = ["check_file", "rm_rf"]\n'
    with pytest.raises(UnknownTool, match="'rm_rf' is an unknown tool.*check_file, done"):
        check_registry(load_config(write(tmp_path, text)))
    text = '[agents.reviewer]\nsubscribe = ["file.found"]\ntools = ["read_file"]\n'
    with pytest.raises(UnknownTool, match="'read_file' is not one of 'reviewer'"):
        check_registry(load_config(write(tmp_path, text)))


@pytest.mark.parametrize(
    ("glob", "message"),
    [
        ("File.Found", "bad subscription glob"),
        ("", "bad subscription glob"),
        ("file.[abc", "unbalanced"),
        ("*", "matches the loop's own 'run.task' events"),
        ("run.*", "matches the loop's own"),
    ],
)
def test_bad_glob(tmp_path: Path, glob: str, message: str) -> None:
    with pytest.raises(BadSubscription, match=message):
        load_config(write(tmp_path, f'[agents.reviewer]\nsubscribe = ["{glob}"]\n'))


def test_missing_model(tmp_path: Path) -> None:
    text = '[chain]\nmodel = "./no-such-model"\n[agents.reviewer]\nsubscribe = ["x"]\n'
    with pytest.raises(ModelMissing, match="'./no-such-model'.*does not exist"):
        load_config(write(tmp_path, text))
    text = '[agents.reviewer]\nsubscribe = ["x"]\nmodel = "nobody-org/no-such-model"\n'
    with pytest.raises(ModelMissing, match="not in the local cache"):
        load_config(write(tmp_path, text))


def test_existing_model_dir_is_accepted(tmp_path: Path, tiny_model_path: Path) -> None:
    text = f'[chain]\nmodel = "{tiny_model_path}"\n[agents.reviewer]\nsubscribe = ["x"]\n'
    assert load_config(write(tmp_path, text)).model == str(tiny_model_path)


def test_structural_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[agents.x\n"))
    with pytest.raises(ConfigError, match="no \\[agents.NAME\\] table"):
        load_config(write(tmp_path, '[chain]\nname = "x"\n'))
    with pytest.raises(
        ConfigError, match="agents.reviewer.max_turns: .*greater than or equal to 1"
    ):
        load_config(write(tmp_path, '[agents.reviewer]\nsubscribe = ["x"]\nmax_turns = 0\n'))
    with pytest.raises(ConfigError, match="Extra inputs are not permitted"):
        load_config(write(tmp_path, '[agents.reviewer]\nsubscribe = ["x"]\nsubscribes = 1\n'))
    with pytest.raises(ConfigError, match="emit 'run.outcome'"):
        load_config(write(tmp_path, '[agents.reviewer]\nsubscribe = ["x"]\nemit = "run.outcome"\n'))
    assert issubclass(ConfigError, AgentError)


def test_task_template(tmp_path: Path) -> None:
    with pytest.raises(BadTaskTemplate, match="unknown placeholder \\{event.__class__\\}"):
        load_config(
            write(tmp_path, '[agents.reviewer]\nsubscribe = ["x"]\ntask = "{event.__class__}"\n')
        )
    event = Event(
        id=7,
        agent="cli",
        event_type="file.found",
        payload={"path": "a.py", "n": 3},
        run_id=None,
        caused_by=None,
        created_at="2026-01-01T00:00:00.000Z",
    )
    text = "{{literal}} {type} #{id}: {payload[path]} {payload[n]} {payload[nope]}"
    assert render_task(text, event) == "{literal} file.found #7: a.py 3 <no nope>"


def test_sandbox_limits_table(tmp_path: Path) -> None:
    from loopbus.agents.sandbox.types import SandboxLimits

    text = (
        '[agents.coder]\nsubscribe = ["job"]\n\n[agents.coder.sandbox]\n'
        "fuel = 5_000_000_000\nmemory_bytes = 33_554_432\nwall_clock_s = 2\n"
        "max_stdout_bytes = 4096\nmax_stderr_bytes = 1024\n"
        "max_host_payload_bytes = 65536\nmax_host_calls = 7\n"
        '\n[agents.plain]\nkind = "coder"\nsubscribe = ["other"]\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.agent("coder").sandbox_limits() == SandboxLimits(
        fuel=5_000_000_000,
        memory_bytes=32 * 1024 * 1024,
        wall_clock_s=2.0,
        max_stdout_bytes=4096,
        max_stderr_bytes=1024,
        max_host_payload_bytes=65536,
        max_host_calls=7,
    )
    assert config.agent("plain").sandbox_limits() is None
    partial = load_config(
        write(tmp_path, '[agents.coder]\nsubscribe = ["job"]\nsandbox = { fuel = 1_000_000 }\n')
    )
    assert partial.agent("coder").sandbox_limits() == SandboxLimits(fuel=1_000_000)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("fuell = 5", r"agents.coder.sandbox: unknown sandbox limit\(s\) 'fuell'; known: fuel,"),
        ("fuel = 10", "sandbox limit fuel=10 must be at least 1000000"),
        ("memory_bytes = 1024", "memory_bytes=1024 must be between 4 MiB and 4 GiB"),
        ("wall_clock_s = 0", "wall_clock_s=0.0 must be between 0 and 3600 seconds"),
        ("max_host_calls = -1", "max_host_calls=-1 must be at least 0"),
        ('fuel = "lots"', "sandbox limit fuel must be a number, not 'lots'"),
        ("max_stdout_bytes = 1e6", "max_stdout_bytes must be a whole number, not 1000000.0"),
        ("wall_clock_s = true", "wall_clock_s must be a number, not True"),
    ],
)
def test_sandbox_limits_errors(tmp_path: Path, table: str, message: str) -> None:
    text = f'[agents.coder]\nsubscribe = ["job"]\n\n[agents.coder.sandbox]\n{table}\n'
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="sandbox must be a table of limits"):
        load_config(write(tmp_path, '[agents.coder]\nsubscribe = ["job"]\nsandbox = 3\n'))
