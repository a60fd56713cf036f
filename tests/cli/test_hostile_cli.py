"""Hostile input found by adversarial testing (issue 14): terminal escapes, rich markup and
malformed input in `tail`, `run`, `up`'s live view and `replay` are printed harmlessly, and
end in `Error: ...`, never a traceback."""

from __future__ import annotations

import io
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from click.testing import Result
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from loopbus.agents.termsafe import printable, safe_json, safe_json_text
from loopbus.bus import SyncBus

Invoke = Callable[..., Result]

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests" / "runs" / "smollm2_version.xml"

# What a file, a model or another agent can put in a payload to act on a terminal: an OSC 52
# clipboard write, a title change, clear screen + cursor home (CSI and its C1 form), a bidi
# override and isolate, and rich markup that would close a tag that is not open.
HOSTILE = (
    "\x1b]52;c;ZXZpbA==\x07 \x1b]0;owned\x07 \x1b[2J\x1b[H \x9b2J \x9d0;t\x9c "
    "\u202eevil\u202c \u2066iso\u2069 \r\x08\x7f [/] [bold]loud[/bold]"
)
# Characters that must never reach the terminal raw.
RAW = ["\x1b", "\x07", "\x9b", "\x9d", "\x9c", "\u202e", "\u202c", "\u2066", "\u2069", "\r"]
RAW += ["\x08", "\x7f"]


def assert_harmless(text: str) -> None:
    for char in RAW:
        assert char not in text, (char, text)


def assert_user_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output  # a usage or setup error
    assert result.stderr.startswith("Error: "), result.stderr
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- termsafe


@given(st.text())
def test_printable_leaves_no_control_character_and_keeps_the_rest(text: str) -> None:
    shown = printable(text)
    assert_harmless(shown)
    assert "\n" not in shown and "\t" not in shown
    kept = printable(text, keep_newlines=True)
    assert_harmless(kept)
    assert kept.count("\n") == text.count("\n")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp"))))
def test_printable_leaves_harmless_text_as_it_is(text: str) -> None:
    assert printable(text) == text == printable(text, keep_newlines=True)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists))
def test_safe_json_is_the_same_json_without_raw_controls(value: object) -> None:
    text = safe_json(value)
    assert_harmless(text)
    assert json.loads(text) == value
    indented = safe_json_text(json.dumps(value, ensure_ascii=False, indent=2))
    assert_harmless(indented)
    assert json.loads(indented) == value


def test_printable_shows_escapes_visibly() -> None:
    assert printable("a\x1b[2Jb\u202ec\x9b") == "a\\x1b[2Jb\\u202ec\\x9b"
    assert printable("one\ntwo\tx", keep_newlines=True) == "one\ntwo\tx"
    assert printable("one\ntwo") == "one\\ntwo"


# ----------------------------------------------------------------------------- tail


def test_tail_shows_escapes_in_payloads_escaped_and_markup_literally(
    invoke: Invoke, bus_file: Path
) -> None:
    assert invoke("publish", "x.y", json.dumps({"text": HOSTILE})).exit_code == 0
    result = invoke("tail")
    assert result.exit_code == 0, result.output
    assert_harmless(result.stdout)
    assert "\\u202eevil" in result.stdout and "\\x9b2J" in result.stdout
    assert "[/] [bold]loud[/bold]" in result.stdout


def test_tail_json_escapes_c1_and_bidi_and_stays_the_same_json(
    invoke: Invoke, bus_file: Path
) -> None:
    assert (
        invoke("publish", "x.y", json.dumps({"text": HOSTILE}), "--agent", "a\u202eb").exit_code
        == 0
    )
    result = invoke("tail", "--json")
    assert result.exit_code == 0, result.output
    assert_harmless(result.stdout)
    record = json.loads(result.stdout)
    assert record["payload"] == {"text": HOSTILE}
    assert record["agent"] == "a\u202eb"


def test_tail_follow_escapes_new_events(bus_file: Path, spawn_cli: Callable[..., object]) -> None:
    with SyncBus(bus_file) as bus:
        bus.publish("x.y", {"n": 0})
    proc = spawn_cli("tail", "--follow", "--since", "1")
    with SyncBus(bus_file) as bus:
        bus.publish("x.y", {"text": HOSTILE})
    line = proc.stdout.readline()  # type: ignore[attr-defined]
    proc.kill()  # type: ignore[attr-defined]
    assert '"text"' in line
    assert_harmless(line)
    assert "\\x1b]52;c;" in line or "\\u001b]52;c;" in line


def test_sql_json_escapes_c1_and_bidi(invoke: Invoke, bus_file: Path) -> None:
    invoke("publish", "x.y", "{}")
    result = invoke("sql", "SELECT char(155) || '2J' || char(8238) AS v", "--json")
    assert result.exit_code == 0, result.output
    assert_harmless(result.stdout)
    assert json.loads(result.stdout) == {"v": "\x9b2J\u202e"}


def test_cursors_json_with_a_blob_consumer_name(invoke: Invoke, bus_file: Path) -> None:
    # A bus written by something else may hold a blob where text belongs.
    invoke("publish", "x.y", "{}")
    with sqlite3.connect(bus_file) as conn:
        conn.execute("INSERT INTO cursors (consumer, last_seen_id) VALUES (?, 1)", (b"\x1b[2J",))
    conn.close()
    result = invoke("cursors", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["consumer"] == "1b5b324a"
    table = invoke("cursors")
    assert table.exit_code == 0 and "x'1b5b324a'" in table.stdout


def test_tail_of_a_payload_nested_too_deeply_to_decode(invoke: Invoke, bus_file: Path) -> None:
    invoke("publish", "x.y", "{}")
    with sqlite3.connect(bus_file) as conn:
        conn.execute(
            "INSERT INTO outbox (agent, event_type, payload, run_id) VALUES ('x', 'deep', ?, 'r')",
            ("[" * 1500 + "]" * 1500,),
        )
    conn.close()
    for args in (("tail",), ("tail", "--json"), ("tail", "--since", "1", "-f"), ("export", "r")):
        assert_user_error(invoke(*args), "event 2 on the bus has a payload nested too deeply")


def test_a_fifo_as_bus_is_an_error_not_a_hang(invoke: Invoke, tmp_path: Path) -> None:
    fifo = tmp_path / "bus.fifo"
    os.mkfifo(fifo)
    for args in (("publish", "x.y", "{}"), ("tail",), ("sql", "SELECT 1"), ("cursors",)):
        assert_user_error(invoke(*args, bus=fifo), "is a named pipe (FIFO)")
    assert_user_error(invoke("tail", bus=Path("/dev/null")), "is a device")


def test_prune_with_an_absurd_max_age_is_a_clear_error(invoke: Invoke, bus_file: Path) -> None:
    invoke("publish", "x.y", "{}")
    result = invoke("prune", "--max-age", "99999999999999999999999w")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "too long" in result.output, result.output


# ----------------------------------------------------------------------------- run's printer


def test_run_printer_shows_tool_results_and_model_output_escaped(
    bus_file: Path, capsys: object
) -> None:
    from loopbus.agents.cli.run_cmds import _printer

    with SyncBus(bus_file) as bus:
        ids = [
            bus.publish("run.tool_result", {"tool": "read_file", "result": HOSTILE}, run_id="r"),
            bus.publish("run.decision", {"decision": {"answer": HOSTILE}}, run_id="r"),
            bus.publish("run.outcome", {"kind": "done", "summary": HOSTILE}, run_id="r"),
        ]
        events = [bus.get(i) for i in ids]
    show = _printer(False)
    for event in events:
        show(event)  # "[/]" must not raise MarkupError
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert_harmless(out)
    assert out.count("[/] [bold]loud[/bold]") == 3
    show_json = _printer(True)
    for event in events:
        show_json(event)
    lines = capsys.readouterr().out.splitlines()  # type: ignore[attr-defined]
    assert_harmless("\n".join(lines))
    assert json.loads(lines[0])["payload"]["result"] == HOSTILE


# ----------------------------------------------------------------------------- up's live view


def test_chain_view_renders_hostile_events_and_status(tmp_path: Path, bus_file: Path) -> None:
    from loopbus.agents.chains.config import load_config
    from loopbus.agents.chains.supervisor import Supervisor
    from loopbus.agents.chains.view import render

    config_file = tmp_path / "chain.toml"
    config_file.write_text(
        '[chain]\nworkspace = "."\n\n[agents.watch]\nkind = "answer"\n'
        'subscribe = ["x.*"]\ntask = "t {payload}"\n',
        encoding="utf-8",
    )
    sup = Supervisor(load_config(config_file), bus_file)
    with SyncBus(bus_file) as bus:
        event_id = bus.publish("x.y", {"text": HOSTILE}, agent="ev[/]il\x1b[2J", run_id="r[/]")
        sup.recent.append(bus.get(event_id))
        sup.recent.append(bus.get(bus.publish("x.y", {"m": "[/] [bold]loud[/bold]"})))
    sup.counts["x.y"] = 1
    slot = sup.slots[0]
    slot.state = "running"
    slot.status = {"activity": HOSTILE, "run_id": "r\x1b]0;t\x07[/]", "event_id": event_id}
    buffer = io.StringIO()
    console = Console(file=buffer, width=400, color_system=None, force_terminal=False)
    console.print(render(sup, title="chain [/] \x1b[2J"))  # MarkupError before the fix
    out = buffer.getvalue()
    assert_harmless(out)
    assert "ev[/]il\\x1b[2J" in out and "chain [/] \\x1b[2J" in out
    assert '{"m": "[/] [bold]loud[/bold]"}' in out


# ----------------------------------------------------------------------------- replay


def test_replay_refuses_a_function_that_is_not_a_decision_function(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from loopbus.agents.cli import main

    text = RECORDING.read_text(encoding="utf-8")
    for name in ("__init__", "with_options", "parse", "__class__"):
        recording = tmp_path / f"{name}.xml"
        recording.write_text(
            text.replace('"function":"Assistant"', f'"function":"{name}"'), encoding="utf-8"
        )
        result = CliRunner().invoke(
            main,
            ["--bus", str(tmp_path / "b.db"), "replay", str(recording), "--workspace", str(ROOT)],
            catch_exceptions=False,
        )
        assert_user_error(result, f"{name!r} is not a BAML decision function")
        assert "Assistant" in result.stderr  # the message lists the real ones


def test_replay_of_a_fifo_or_device_is_an_error(invoke: Invoke, tmp_path: Path) -> None:
    fifo = tmp_path / "run.xml"
    os.mkfifo(fifo)
    for source in (str(fifo), "/dev/zero"):
        assert_user_error(invoke("replay", source), "is not a regular file")


def test_arguments_that_are_not_utf8_are_an_error(invoke: Invoke, bus_file: Path) -> None:
    # Undecodable bytes in argv reach Python as lone surrogates, which SQLite cannot store.
    invoke("publish", "x.y", "{}")
    bad = "ab\udcff"
    for args in (
        ("publish", "x.y", "{}", "--agent", bad),
        ("sql", f"SELECT 1 -- {bad}"),
        ("sql", "SELECT ?", "-p", bad),
        ("tail", "--type", bad),
        ("export", bad),
        ("replay", bad),
    ):
        assert_user_error(invoke(*args), "is not valid UTF-8 text")
    assert invoke("tail", "--json").stdout.count("\n") == 1  # nothing was published


def test_error_messages_show_escapes_escaped(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("tail", bus=tmp_path / "x\x1b]0;pwned\x07.db")
    assert_user_error(result, "x\\x1b]0;pwned\\x07.db")
    assert_harmless(result.stderr)


def read_on_a_terminal(argv: list[str], cwd: Path) -> str:
    """What `argv` writes to stdout when stdout is a terminal (a pseudo-terminal here)."""
    import pty
    import subprocess

    from tests.cli.conftest import clean_env

    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(argv, stdout=child_fd, stderr=subprocess.PIPE, cwd=cwd, env=clean_env())
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()  # type: ignore[union-attr]
    return b"".join(chunks).decode("utf-8")


def test_sql_csv_shows_escapes_on_a_terminal_and_keeps_them_in_a_pipe(
    invoke: Invoke, bus_file: Path, tmp_path: Path
) -> None:
    from tests.cli.conftest import loopbus_argv

    invoke("publish", "x.y", json.dumps({"text": HOSTILE}))
    statement = "SELECT payload ->> '$.text' AS t FROM outbox"
    piped = invoke("sql", statement, "--csv")
    assert piped.exit_code == 0 and HOSTILE.replace("\r", "") in piped.stdout.replace("\r", "")
    shown = read_on_a_terminal(loopbus_argv(bus_file, "sql", statement, "--csv"), tmp_path)
    assert_harmless(shown.replace("\r\n", "\n"))  # the terminal itself turns \n into \r\n
    assert "\\x1b]52;c;" in shown and "\\u202eevil" in shown


def test_export_shows_escapes_on_a_terminal_and_keeps_them_in_a_file(
    invoke: Invoke, bus_file: Path, tmp_path: Path
) -> None:
    from loopbus.agents.run.replay import load_recording
    from tests.cli.conftest import loopbus_argv

    settings = load_recording(RECORDING).task_event.payload["settings"]
    with SyncBus(bus_file) as bus:
        bus.publish("run.task", {"task": HOSTILE, "settings": settings}, run_id="r1")
    piped = invoke("export", "r1")
    assert piped.exit_code == 0, piped.output
    assert "\x9b2J" in piped.stdout and "\u202eevil" in piped.stdout  # lossless
    shown = read_on_a_terminal(loopbus_argv(bus_file, "export", "r1"), tmp_path)
    assert_harmless(shown.replace("\r\n", "\n"))
    assert "\\x9b2J" in shown and "\\u202eevil" in shown
