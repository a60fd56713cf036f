"""SandboxContract: the interface every sandbox configuration must honour."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopbus.agents.errors import AgentError, SandboxClosed, SandboxConfigError, SandboxError
from loopbus.agents.sandbox.core import Sandbox, SandboxLimits, SandboxSession, SnippetResult

CONFIGS = {
    "defaults": SandboxLimits(),
    "small": SandboxLimits(
        fuel=200_000_000,
        memory_bytes=8 * 1024 * 1024,
        wall_clock_s=2,
        max_stdout_bytes=1024,
        max_host_calls=3,
    ),
    "large": SandboxLimits(
        fuel=50_000_000_000, memory_bytes=256 * 1024 * 1024, max_host_payload_bytes=1 << 20
    ),
}


@pytest.fixture(params=sorted(CONFIGS))
def limits(request: pytest.FixtureRequest) -> SandboxLimits:
    return CONFIGS[request.param]


class TestSandboxContract:
    """Create, run, read stdout/stderr/result/error/fuel, persist, recover, close."""

    def test_run_reports_stdout_result_and_fuel(self, make_sandbox, limits: SandboxLimits) -> None:
        result = make_sandbox(limits).run("print('hello', 6 * 7)\n'done' + '!'")
        assert isinstance(result, SnippetResult)
        assert result.ok and not result.trapped
        assert result.stdout == "hello 42\n"
        assert result.result == "'done!'"
        assert result.error is None and result.error_type is None
        assert 0 < result.fuel_used < limits.fuel
        assert result.fresh_session

    def test_stderr_is_separate(self, make_sandbox, limits: SandboxLimits) -> None:
        result = make_sandbox(limits).run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
        assert (result.stdout, result.stderr) == ("out\n", "err\n")

    def test_no_result_for_statements_or_none(self, make_sandbox, limits: SandboxLimits) -> None:
        box = make_sandbox(limits)
        assert box.run("x = 1").result is None
        assert box.run("print('p')").result is None
        assert box.run("None").result is None

    def test_guest_exception_is_an_error_not_a_trap(
        self, make_sandbox, limits: SandboxLimits
    ) -> None:
        box = make_sandbox(limits)
        box.run("a = 5")
        result = box.run("x = 1\nraise ValueError('bad input')")
        assert not result.ok and not result.trapped
        assert result.error_type == "ValueError"
        assert "ValueError: bad input" in result.error
        assert "line 2" in result.error and "<stdin>" not in result.error
        assert box.run("a").result == "5"  # session survived

    def test_state_persists_across_snippets(self, make_sandbox, limits: SandboxLimits) -> None:
        box = make_sandbox(limits)
        box.run(
            "import json\ncounter = 0\ndef bump(n):\n    global counter\n    counter += n\n    return counter"
        )
        box.run("bump(2)")
        result = box.run("bump(3)")
        assert result.result == "5" and not result.fresh_session
        assert box.run("json.dumps({'c': counter})").result == "'{\"c\": 5}'"

    def test_trap_resets_session_and_next_run_is_fresh(
        self, make_sandbox, limits: SandboxLimits
    ) -> None:
        box = make_sandbox(SandboxLimits(fuel=50_000_000, memory_bytes=limits.memory_bytes))
        box.run("keep = 1")
        trapped = box.run("while True:\n    pass")
        assert trapped.trapped and trapped.error_type == "FuelExhausted"
        assert "session was reset" in trapped.error
        after = box.run("print('alive')\nkeep")
        assert after.fresh_session and after.stdout == "alive\n"
        assert after.error_type == "NameError"

    def test_close_and_context_manager(self, cache_dir: Path, limits: SandboxLimits) -> None:
        with Sandbox(limits, cache_dir=cache_dir) as box:
            assert box.run("1").result == "1"
        with pytest.raises(SandboxClosed):
            box.run("1")
        box.close()  # idempotent

    def test_session_object_directly(self, cache_dir: Path, limits: SandboxLimits) -> None:
        with SandboxSession(limits, cache_dir=cache_dir) as session:
            assert session.alive
            assert session.run("2 ** 10").result == "1024"
        assert not session.alive
        with pytest.raises(SandboxClosed):
            session.run("1")

    def test_dead_session_refuses_to_run(self, cache_dir: Path) -> None:
        session = SandboxSession(SandboxLimits(fuel=10_000_000), cache_dir=cache_dir)
        assert session.run("while True: pass").trapped
        assert not session.alive
        with pytest.raises(SandboxClosed, match="stopped"):
            session.run("1")
        session.close()

    def test_to_text_for_the_model(self, make_sandbox, limits: SandboxLimits) -> None:
        box = make_sandbox(limits)
        assert box.run("print('a')\n1 + 1").to_text() == "a\n[result] 2"
        assert "use print()" in box.run("x = 3").to_text()
        text = box.run("undefined_name").to_text()
        assert text.startswith("[error] Traceback") and "NameError" in text
        long = box.run("print('x' * 5000)").to_text(max_chars=200)
        assert len(long) <= 200 and "characters cut" in long


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fuel": 10},
        {"memory_bytes": 1024},
        {"wall_clock_s": 0},
        {"max_stdout_bytes": 1},
        {"max_host_payload_bytes": 10},
        {"max_host_calls": -1},
    ],
)
def test_invalid_limits_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(SandboxConfigError, match=next(iter(kwargs))):
        SandboxLimits(**kwargs)


def test_errors_share_the_agent_base() -> None:
    assert issubclass(SandboxError, AgentError)
    assert issubclass(SandboxClosed, SandboxError) and issubclass(SandboxConfigError, SandboxError)


def test_bad_workspace_and_host_function_names(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxConfigError, match="not a directory"):
        Sandbox(workspace=tmp_path / "missing", cache_dir=cache_dir)
    with pytest.raises(SandboxConfigError, match="identifier"):
        SandboxSession(host_functions={"bad-name": print}, cache_dir=cache_dir)
