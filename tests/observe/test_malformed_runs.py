"""Malformed run.* events (forged or corrupt, published straight on the bus) never break
`loopbus runs`, `show`, `report` or `serve`: a value of the wrong type is shown as text."""

from __future__ import annotations

import json
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopbus.agents.cli import main
from loopbus.agents.observe.report import build_report
from loopbus.agents.observe.runs import RunNotFound, list_runs, load_timeline
from loopbus.agents.observe.serve import make_server, state
from loopbus.bus import SyncBus

RUN = "forged-1"
# Published with the bus API (the library refuses run.* events only from tools).
HOSTILE: list[tuple[str, Any]] = [
    ("run.task", {"task": {"nested": [1]}, "settings": {"context_window": "x", "budget": [1]}}),
    (
        "run.model_call",
        {
            "turn": "one",
            "prompt_tokens": "\x1b[31mred",
            "prefill_s": "a",
            "decode_s": [2],
            "elided": "\x1b[2J",
            "ts": "2020-01-01T00:00:00",  # no zone: next to the bus's UTC times
            "parse_error": 7,
        },
    ),
    ("run.tool_call", {"tool": "\x1b]0;title\x07", "args": None}),
    ("run.tool_result", ["not", "an", "object"]),
    ("run.outcome", {"kind": 5, "summary": {"a": 1}, "turns": "many", "counts": {"x": "y"}}),
    ("run.outcome", 7),
]


def _publish(path: Path, events: list[tuple[str, Any]], run_id: str = RUN) -> None:
    with SyncBus(path) as bus:
        for event_type, payload in events:
            bus.publish(event_type, payload, agent="forger", run_id=run_id)


def _cli(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--bus", str(path), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback, not an `Error: ...`
    return result.exit_code, result.output


def test_hostile_run_events_render_as_text(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    _publish(path, HOSTILE)
    [run] = list_runs(path)
    assert (run.outcome, run.turns, run.detail) == ("5", "many", '{"a":1}')
    code, out = _cli(path, "runs")
    assert code == 0 and RUN in out and "\x1b" not in out
    code, out = _cli(path, "runs", "--json")
    assert code == 0 and json.loads(out)["outcome"] == "5"
    timeline = load_timeline(path, RUN)
    assert timeline.kind == "?" and timeline.detail == "7"  # the last outcome is not an object
    assert timeline.context_window == 0 and timeline.budget == 0.4
    turn = timeline.turns[0]
    assert (turn.number, turn.prompt_tokens, turn.model_s, turn.elided) == (1, None, None, 0)
    assert turn.result == ["not", "an", "object"] and turn.parse_error == "7"
    code, out = _cli(path, "show", RUN)
    assert code == 0, out
    assert "\x1b" not in out and "\\x1b]0;title\\x07" in out
    assert 'task: {"nested": [1]}' in out and "outcome: ?  7" in out
    code, out = _cli(path, "show", RUN, "--json")
    assert code == 0 and json.loads(out)["outcome"] == 7
    code, out = _cli(path, "show", RUN, "--prompt", "1")
    assert code != 0 and out.startswith("Error: ")
    page = build_report(path, RUN)
    assert "<b>Outcome:</b> 7</p>" in page and "]0;title" in page
    assert f"<code>{RUN}</code>" in build_report(path)  # the chain page
    code, out = _cli(path, "report", "--chain", "-o", str(tmp_path / "chain.html"))
    assert code == 0, out


def test_a_run_whose_task_is_not_an_object_is_still_shown(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    _publish(path, [("run.outcome", {"kind": "done"}), ("run.task", [1, 2])])
    timeline = load_timeline(path, RUN)
    assert (timeline.task, timeline.kind) == ("[1, 2]", "done")
    code, out = _cli(path, "report", "--chain", "-o", str(tmp_path / "chain.html"))
    assert code == 0, out
    with pytest.raises(RunNotFound):
        load_timeline(path, "no-such-run")


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "bus.db"
    _publish(path, HOSTILE)
    server = make_server(path, port=0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", path
    finally:
        server.shutdown()
        server.server_close()


def test_serve_renders_hostile_runs(server_url: tuple[str, Path]) -> None:
    url, path = server_url
    with urllib.request.urlopen(url + "/api/state", timeout=10) as response:
        runs = json.loads(response.read())["runs"]
    # The page's script calls outcome.replace(...): it must be a string.
    assert [(r["run_id"], r["outcome"]) for r in runs] == [(RUN, "5")]
    for page in (f"/report?run={RUN}", "/report"):
        with urllib.request.urlopen(url + page, timeout=10) as response:
            assert response.status == 200 and RUN in response.read().decode()


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_KEYS = st.sampled_from(
    [
        "task", "settings", "kind", "summary", "reason", "turns", "counts", "turn", "ts",
        "prompt_tokens", "completion_tokens", "prefill_s", "decode_s", "elided", "parse_error",
        "raw", "decision", "tool", "args", "result", "error", "prompt_template",
        "prompt_messages", "prompt_sha256",
    ]
)  # fmt: skip
_PAYLOADS = _JSON | st.dictionaries(_KEYS, _JSON | st.just("2021-05-01T10:00:00+02:00"))
_TYPES = st.sampled_from(
    [
        "run.task", "run.model_call", "run.decision", "run.tool_call", "run.tool_result",
        "run.error", "run.llm_call", "run.outcome",
    ]
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PAYLOADS, st.lists(st.tuples(_TYPES, _PAYLOADS), max_size=6))
def test_any_json_payloads_never_break_runs_show_report(
    task: Any, events: list[tuple[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bus.db"
        _publish(path, [("run.task", task), *events])
        assert [r.run_id for r in list_runs(path)] == [RUN]
        state(path)
        build_report(path, RUN)
        build_report(path)
        for args in (["runs"], ["runs", "--json"], ["show", RUN], ["show", RUN, "--json"]):
            code, out = _cli(path, *args)
            assert code == 0 and "\x1b" not in out, (args, out)
        code, out = _cli(path, "show", RUN, "--prompt", "1")
        assert code == 0 or out.startswith("Error: "), out
