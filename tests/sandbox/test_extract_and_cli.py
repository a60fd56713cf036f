"""extract_code for small models' replies, and the `loopbus sandbox` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from loopbus.agents.cli import main
from loopbus.agents.sandbox.core import extract_code


def test_fenced_python_block_with_prose() -> None:
    text = "Sure! Here is the code:\n```python\nx = 1\nprint(x)\n```\nThis prints 1."
    assert extract_code(text) == "x = 1\nprint(x)\n"


def test_several_blocks_are_concatenated_and_other_languages_skipped() -> None:
    text = "First:\n```py\na = 1\n```\nThen:\n```\nprint(a)\n```\nOutput:\n```text\n1\n```"
    assert extract_code(text) == "a = 1\nprint(a)\n"


def test_plain_text_is_used_as_is() -> None:
    assert extract_code("print('no fences')") == "print('no fences')"


def test_unterminated_fence_keeps_the_rest() -> None:
    assert extract_code("```python\nprint(1)\nprint(2)") == "print(1)\nprint(2)"


def test_only_foreign_blocks_are_still_used() -> None:
    assert extract_code('```json\n{"a": 1}\n```') == '{"a": 1}\n'


def test_tilde_fences_and_indented_closing() -> None:
    assert extract_code("~~~python\nx = 2\n~~~") == "x = 2\n"


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters="`~\r"), max_size=40),
        min_size=1,
        max_size=4,
    )
)
def test_round_trip_of_fenced_blocks(blocks: list[str]) -> None:
    bodies = [b.rstrip("\n") for b in blocks]
    text = "\n".join(f"Step {i}:\n```python\n{body}\n```" for i, body in enumerate(bodies))
    assert extract_code(text) == "\n".join(bodies) + "\n"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, cache_root: Path) -> CliRunner:
    monkeypatch.setenv("LOOPBUS_CACHE", str(cache_root))
    return CliRunner()


def test_cli_runs_code_and_prints_the_value(runner: CliRunner) -> None:
    result = runner.invoke(main, ["sandbox", "-c", "print('hi')\n6 * 7"])
    assert result.exit_code == 0, result.output
    assert result.output == "hi\n42\n"


def test_cli_file_and_json(runner: CliRunner, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("print(sum(range(4)))")
    result = runner.invoke(main, ["sandbox", str(script), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["stdout"] == "6\n" and data["trapped"] is False and data["fuel_used"] > 0


def test_cli_stdin(runner: CliRunner) -> None:
    assert (
        runner.invoke(main, ["sandbox", "-"], input="print('from stdin')").output == "from stdin\n"
    )


def test_cli_guest_error_exits_1(runner: CliRunner) -> None:
    result = runner.invoke(main, ["sandbox", "-c", "undefined_thing"])
    assert result.exit_code == 1
    assert "Error: NameError: name 'undefined_thing' isn't defined" in result.output


def test_cli_timeout_violation(runner: CliRunner) -> None:
    result = runner.invoke(
        main, ["sandbox", "-c", "while True: pass", "--timeout", "0.3", "--fuel", "1000000000000"]
    )
    assert result.exit_code == 1
    assert "Error: the snippet ran longer than the 0.3 s wall-clock limit" in result.output
    assert "session was reset" not in result.output


def test_cli_fuel_and_memory_options(runner: CliRunner) -> None:
    fuel = runner.invoke(main, ["sandbox", "-c", "while True: pass", "--fuel", "5000000"])
    assert fuel.exit_code == 1 and "Error: the snippet used up its fuel (5,000,000" in fuel.output
    mem = runner.invoke(
        main, ["sandbox", "-c", "x = bytearray(100 * 1024 * 1024)", "--memory", "8M"]
    )
    assert mem.exit_code == 1 and "Error:" in mem.output
    bad = runner.invoke(main, ["sandbox", "-c", "1", "--memory", "lots"])
    assert bad.exit_code == 2 and "not a size" in bad.output


def test_cli_mount_is_read_only(runner: CliRunner, workspace: Path) -> None:
    ok = runner.invoke(
        main, ["sandbox", "--mount", str(workspace), "-c", "read('notes.txt').split()"]
    )
    assert ok.exit_code == 0 and ok.output == "['alpha', 'beta']\n"
    write = runner.invoke(
        main, ["sandbox", "--mount", str(workspace), "-c", "open('/input/x', 'w')"]
    )
    assert write.exit_code == 1 and "Error: OSError" in write.output
    assert not (workspace / "x").exists()


def test_cli_needs_code_and_has_help(runner: CliRunner) -> None:
    none = runner.invoke(main, ["sandbox"])
    assert none.exit_code == 2 and "Error: give either -c CODE or a FILE" in none.output
    both = runner.invoke(main, ["sandbox", "-c", "1", "-"], input="2")
    assert both.exit_code == 2
    help_text = runner.invoke(main, ["sandbox", "--help"]).output
    assert "Examples:" in help_text and "loopbus sandbox -c" in help_text


def test_run_sandbox_limit_flags_are_validated_before_any_model_loads(
    runner: CliRunner, tmp_path: Path
) -> None:
    args = ["--bus", str(tmp_path / "bus.db"), "run", "coder", "x"]
    bad = runner.invoke(main, [*args, "--sandbox-fuel", "10"])
    assert bad.exit_code == 2 and "sandbox limit fuel=10 must be at least 1000000" in bad.output
    size = runner.invoke(main, [*args, "--sandbox-memory", "12Q"])
    assert size.exit_code == 2 and "is not a size" in size.output
