"""Poison events: a trigger, task, model answer or emit the bus cannot store ends its run
`failed` (a small, recorded outcome with the reason) and the agent goes on with the next event,
instead of crash-looping on it."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

from chain_helpers import loopbus, make_workspace, write_chain

from loopbus.agents.chains.config import load_config
from loopbus.agents.chains.worker import AgentWorker, FirstDecision
from loopbus.bus import SyncBus

LIMIT = 1 << 20  # the bus's default payload limit (1 MiB)

DOUBLING = """
[agents.checker]
subscribe = ["file.*"]
task = "Check {payload} and again {payload}"
max_turns = 1
budget = 1.0
emit = "review.done"
"""

ASSISTANT = """
[agents.assistant]
subscribe = ["question"]
task = "Answer: {payload[text]}"
max_turns = 2
budget = 1.0
emit = "answered"
"""


class FirstAnswer(FirstDecision):
    """The real runtime, except that its first answer is ``text`` (as a model server could
    send it: lone surrogates come through JSON escapes)."""

    def __init__(self, runtime: Any, text: str) -> None:
        super().__init__(runtime, {})
        self._text = text


def _config(tmp_path: Path, model: Path, text: str) -> Any:
    ws = make_workspace(tmp_path / "ws", 2)
    cfg = write_chain(tmp_path / "chain.toml", text, model=model, workspace=ws, output=tmp_path)
    return load_config(cfg)


def _cursor(bus: SyncBus, consumer: str) -> int:
    return {c.consumer: c.last_seen_id for c in bus.cursors()}.get(consumer, 0)


def _outcome(bus: SyncBus, run_id: str) -> Any:
    [outcome] = bus.events(run_id=run_id, types=["run.outcome"])
    return outcome.payload


def test_a_task_over_the_payload_limit_fails_its_run_and_the_agent_goes_on(
    tmp_path: Path, tiny_model_path: Path, tiny_runtime: Any, bus_file: Path
) -> None:
    config = _config(tmp_path, tiny_model_path, DOUBLING)
    with SyncBus(bus_file) as bus:
        # 0.6 MB fits on the bus; the template doubles it into a 1.2 MB task.
        poison = bus.publish("file.found", {"path": "mod00.py", "blob": "x" * 600_000})
        fine = bus.publish("file.found", {"path": "mod01.py"})
        worker = AgentWorker(config, "checker", bus, runtime=tiny_runtime)
        assert worker.serve(idle_exit=0.3, poll=0.1) == 2
        failed = _outcome(bus, f"checker-e{poison}")
        assert failed["kind"] == "failed"
        assert "could not record run.task on the bus: payload is" in failed["reason"]
        assert "above the bus limit of 1048576 bytes" in failed["reason"]
        assert len(failed["reason"]) < 1000
        # The run still starts with a (stand-in) task, so reading it back works.
        [task] = bus.events(run_id=f"checker-e{poison}", types=["run.task"])
        assert task.payload["unrecorded"] is True and task.caused_by == poison
        assert _outcome(bus, f"checker-e{fine}")["kind"] in ("done", "max_turns")
        assert _cursor(bus, "checker") >= fine
        emits = {e.payload["trigger_id"]: e.payload for e in bus.events(types=["review.done"])}
        assert emits[poison]["outcome"] == "failed" and emits[poison]["blob"] == "x" * 600_000
        assert set(emits) == {poison, fine}
        # A second process (a redelivery) finds both outcomes and publishes nothing new.
        count = bus.last_id()
        again = AgentWorker(config, "checker", bus, runtime=tiny_runtime)
        assert again.resume_unfinished() == 0
        assert bus.last_id() == count


def test_a_trigger_that_leaves_no_room_for_the_emit_fails_at_once(
    tmp_path: Path, tiny_model_path: Path, tiny_runtime: Any, bus_file: Path
) -> None:
    text = DOUBLING.replace("{payload} and again {payload}", "{payload[path]}")
    config = _config(tmp_path, tiny_model_path, text)
    with SyncBus(bus_file) as bus:
        # Just under the limit: the emit (its fields plus trigger, run and outcome) is not.
        poison = bus.publish("file.found", {"path": "mod00.py", "blob": "y" * (LIMIT - 100)})
        fine = bus.publish("file.found", {"path": "mod01.py"})
        worker = AgentWorker(config, "checker", bus, runtime=tiny_runtime)
        assert worker.serve(idle_exit=0.3, poll=0.1) == 2
        run_id = f"checker-e{poison}"
        failed = _outcome(bus, run_id)
        assert failed["kind"] == "failed" and "too large to handle" in failed["reason"]
        assert not bus.events(run_id=run_id, types=["run.model_call"])  # no model call
        emits = {e.payload["trigger_id"]: e.payload for e in bus.events(types=["review.done"])}
        assert set(emits) == {poison, fine}  # exactly one emit per trigger, poison included
        assert emits[poison]["outcome"] == "failed" and "blob" not in emits[poison]
        assert "the trigger's fields were left out" in emits[poison]["fields_dropped"]
        assert emits[fine]["path"] == "mod01.py"
        assert _cursor(bus, "checker") >= fine


def test_an_unstorable_model_answer_fails_its_run_and_the_agent_goes_on(
    tmp_path: Path, tiny_model_path: Path, tiny_runtime: Any, bus_file: Path
) -> None:
    config = _config(tmp_path, tiny_model_path, ASSISTANT)
    answers = {
        "surrogate": (
            '{"action": "done", "summary": "half a pair: \ud800"}',
            "surrogates not allowed",
        ),
        "huge": (
            json.dumps({"action": "done", "summary": "z" * (LIMIT + 10)}),
            "above the bus limit",
        ),
    }
    for name, (answer, why) in answers.items():
        with SyncBus(tmp_path / f"{name}.db") as bus:
            poison = bus.publish("question", {"text": "what?"})
            fine = bus.publish("question", {"text": "and now?"})
            # The first model answer is `answer` (recorded like any other), then the real model.
            runtime = FirstAnswer(tiny_runtime, answer)
            worker = AgentWorker(config, "assistant", bus, runtime=runtime)
            assert worker.serve(idle_exit=0.3, poll=0.1) == 2
            failed = _outcome(bus, f"assistant-e{poison}")
            assert failed["kind"] == "failed", name
            assert failed["reason"].startswith("could not record run.model_call, "), name
            assert why in failed["reason"] and failed["unrecorded"][0] == "run.model_call"
            assert len(failed["reason"]) <= 1000
            assert _outcome(bus, f"assistant-e{fine}")["kind"] in ("done", "max_turns", "failed")
            assert len(bus.events(types=["answered"])) == 2
            assert _cursor(bus, "assistant") >= fine


def test_an_agent_process_survives_a_poison_event(
    tmp_path: Path, tiny_model_path: Path, bus_file: Path
) -> None:
    ws = make_workspace(tmp_path / "ws", 2)
    cfg = write_chain(
        tmp_path / "chain.toml", DOUBLING, model=tiny_model_path, workspace=ws, output=ws
    )
    with SyncBus(bus_file) as bus:
        poison = bus.publish("file.found", {"path": "mod00.py", "blob": "x" * 600_000})
        fine = bus.publish("file.found", {"path": "mod01.py"})
    proc = subprocess.run(
        loopbus("--bus", str(bus_file), "agent", "checker", "--config", str(cfg))
        + ["--exit-when-idle", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    with SyncBus(bus_file) as bus:
        assert _outcome(bus, f"checker-e{poison}")["kind"] == "failed"
        assert _outcome(bus, f"checker-e{fine}")["kind"] in ("done", "max_turns")
        assert _cursor(bus, "checker") >= fine


def test_the_emit_room_follows_the_bus_limit(
    tmp_path: Path, tiny_model_path: Path, tiny_runtime: Any, bus_file: Path
) -> None:
    text = DOUBLING.replace("{payload} and again {payload}", "{payload[path]}")
    config = _config(tmp_path, tiny_model_path, text)
    with SyncBus(bus_file, max_payload_bytes=8192) as bus:
        fine = bus.publish("file.found", {"path": "mod01.py", "blob": "b" * 4000})
        poison = bus.publish("file.found", {"path": "mod00.py", "blob": "y" * 7000})
        worker = AgentWorker(config, "checker", bus, runtime=tiny_runtime)
        assert worker.serve(idle_exit=0.3, poll=0.1) == 2
        assert _outcome(bus, f"checker-e{fine}")["kind"] in ("done", "max_turns")
        assert "too large to handle" in _outcome(bus, f"checker-e{poison}")["reason"]
        emits = {e.payload["trigger_id"]: e.payload for e in bus.events(types=["review.done"])}
        assert emits[fine]["blob"] == "b" * 4000 and emits[poison]["outcome"] == "failed"


def test_a_payload_too_deep_to_re_encode_fails_its_run(
    tmp_path: Path, tiny_model_path: Path, tiny_runtime: Any, bus_file: Path
) -> None:
    # The bus stores it (encoded near the top of a short stack), but the agent renders the
    # task and encodes the emit deeper in its own stack, where json raises RecursionError.
    text = DOUBLING.replace("{payload} and again {payload}", "{payload}")
    config = _config(tmp_path, tiny_model_path, text)
    with SyncBus(bus_file) as bus:
        deep: Any = []
        for _ in range(985):
            deep = [deep]
        ids: list[int] = []
        # From a fresh thread (a fresh stack), like a publisher in another process.
        publisher = threading.Thread(
            target=lambda: ids.append(bus.publish("file.found", {"path": "mod00.py", "d": deep}))
        )
        publisher.start()
        publisher.join()
        [poison] = ids
        fine = bus.publish("file.found", {"path": "mod01.py"})
        worker = AgentWorker(config, "checker", bus, runtime=tiny_runtime)
        assert worker.serve(idle_exit=0.3, poll=0.1) == 2
        failed = _outcome(bus, f"checker-e{poison}")
        assert failed["kind"] == "failed"
        assert f"cannot build the task from the file.found event {poison}" in failed["reason"]
        assert _outcome(bus, f"checker-e{fine}")["kind"] in ("done", "max_turns")
        emits = {e.payload["trigger_id"]: e.payload for e in bus.events(types=["review.done"])}
        assert set(emits) == {poison, fine} and "d" not in emits[poison]
        assert _cursor(bus, "checker") >= fine
