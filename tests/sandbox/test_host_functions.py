"""Host functions: read / publish / llm / summarize and extra callables, JSON crossing, errors."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from loopbus.agents.sandbox.core import SandboxLimits


def test_read_workspace_files(make_sandbox, workspace: Path) -> None:
    box = make_sandbox(workspace=workspace)
    assert box.run("read('notes.txt')").result == "'alpha\\nbeta\\n'"
    assert box.run("read('/input/docs/a.json')").result == '\'{"title": "A", "n": 3}\''
    missing = box.run("read('nope.txt')")
    assert missing.error_type == "HostError" and "no such file" in missing.error


def test_read_refuses_files_over_the_payload_limit(make_sandbox, workspace: Path) -> None:
    (workspace / "big.txt").write_text("z" * 5000)
    box = make_sandbox(SandboxLimits(max_host_payload_bytes=2048), workspace=workspace)
    result = box.run("read('big.txt')")
    assert result.error_type == "HostError" and "open('/input/big.txt').read(n)" in result.error
    assert box.run("len(open('/input/big.txt').read())").result == "5000"


def test_publish_is_attributed_by_the_injected_callable(make_sandbox) -> None:
    events: list[tuple[str, Any]] = []

    def publish(event_type: str, payload: Any) -> int:
        events.append((event_type, payload))
        return len(events)

    box = make_sandbox(publish=publish)
    result = box.run(
        "ids = [publish('finding', {'title': t, 'n': i}) for i, t in enumerate(['a', 'b'])]\nids"
    )
    assert result.result == "[1, 2]" and result.host_calls == 2
    assert events == [("finding", {"title": "a", "n": 0}), ("finding", {"title": "b", "n": 1})]


def test_llm_and_summarize_call_the_model(make_sandbox) -> None:
    prompts: list[str] = []

    def llm(prompt: str) -> str:
        prompts.append(prompt)
        return f"answer({len(prompt)})"

    box = make_sandbox(llm=llm)
    assert box.run("llm('hi')").result == "'answer(2)'"
    summary = box.run("summarize('long text')").result
    assert summary is not None and summary.startswith("'answer(")
    assert prompts[1].startswith("Summarize the following text") and prompts[1].endswith(
        "long text"
    )


def test_explicit_summarize_wins(make_sandbox) -> None:
    box = make_sandbox(llm=lambda p: "llm", summarize=lambda t: "sum:" + t)
    assert box.run("summarize('x')").result == "'sum:x'"


def test_missing_callables_explain_themselves(sandbox) -> None:
    for name, why in [
        ("publish('a', 1)", "no event bus"),
        ("llm('x')", "no model"),
        ("summarize('x')", "no model"),
    ]:
        result = sandbox.run(name)
        assert result.error_type == "HostError" and why in result.error


def test_json_round_trip_and_kwargs(make_sandbox) -> None:
    seen: list[Any] = []

    def echo(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        return {"args": list(args), "kwargs": kwargs, "nested": [1.5, None, True, "ü"]}

    box = make_sandbox(host_functions={"echo": echo})
    result = box.run("r = echo(1, 'two', [3], flag=False)\nr['nested'], r['kwargs']")
    assert result.result == "([1.5, None, True, '\\xfc'], {'flag': False})"  # MicroPython's repr
    assert seen == [((1, "two", [3]), {"flag": False})]


def test_non_json_arguments_and_results_are_host_errors(make_sandbox) -> None:
    box = make_sandbox(host_functions={"give": lambda: {1, 2}, "take": lambda x: x})
    bad_arg = box.run("take(object())")
    assert bad_arg.error_type == "HostError" and "JSON" in bad_arg.error
    bad_result = box.run("give()")
    assert bad_result.error_type == "HostError" and "not JSON" in bad_result.error


def test_host_functions_run_on_the_calling_thread(make_sandbox) -> None:
    threads: list[int] = []
    box = make_sandbox(host_functions={"where": lambda: threads.append(threading.get_ident())})
    box.run("where()\nwhere()")
    assert threads == [threading.get_ident()] * 2


def test_host_time_is_not_guest_time(make_sandbox) -> None:
    import time

    def slow() -> str:
        time.sleep(0.4)
        return "done"

    box = make_sandbox(SandboxLimits(wall_clock_s=0.3), host_functions={"slow": slow})
    result = box.run("slow()")
    assert result.ok and result.result == "'done'" and result.duration_s >= 0.4


def test_large_results_cross_in_a_second_call(make_sandbox) -> None:
    box = make_sandbox(host_functions={"blob": lambda n: "x" * n})
    assert box.run("len(blob(100000))").result == "100000"
    assert box.run("len(blob(10))").result == "10"
