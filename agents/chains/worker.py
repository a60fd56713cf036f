"""One long-lived agent process (`loopbus agent NAME --config FILE`).

Protocol (at-least-once delivery, exactly-once outcomes):

* The process consumes its subscriptions through its own cursor. With ``parallelism = n`` the
  agent runs n processes; instance ``i`` uses the consumer ``NAME#i/n`` and owns the events
  with ``id % n == i`` (its subscription skips the others, and commits past them while idle). Partitioning by id needs no claim
  table and never gives one event to two processes.
* Each owned event starts one run with the deterministic id ``NAME-e<event id>``, caused by
  the event. ``run_agent`` with an id already on the bus resumes that run, and returns the
  recorded outcome without publishing anything when it has one: redelivery is harmless.
* On startup the process first resumes its unfinished runs (those of its partition).
* The cursor moves past an event only after its run reached a terminal outcome. When the
  agent has ``emit`` configured, that event is published in the same transaction as the ack
  (and skipped if this run already published it), so it exists exactly once per trigger.
* A poison event never crash-loops the agent: a trigger whose ``emit`` could not be stored
  (its payload leaves no room under the bus's payload limit) gets a run that ends ``failed``
  at once, and run events the bus refuses (a task, model answer or result over the limit or
  not valid UTF-8) end the run ``failed`` (:mod:`loopbus.agents.run.state`); the emit then carries
  only the small fields, and the cursor moves on.

Agents never import each other: the bus is the only coupling. Tools read the bus and the
run's trigger through their ``ToolContext``; writing tools write into the chain's ``output``
folder (default: the bus file's folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopbus.agents.chains.config import AgentConfig, ChainConfig, consumer_name, render_task
from loopbus.agents.run.events import RunEventType

__all__ = ["AgentWorker", "FirstDecision", "parse_instance", "run_id_for"]


def run_id_for(agent: str, event_id: int) -> str:
    """The run id of ``agent``'s run for triggering event ``event_id``."""
    return f"{agent}-e{event_id}"


def parse_instance(text: str) -> tuple[int, int]:
    """``"1/2"`` -> ``(1, 2)``; raises ValueError on anything else."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match:
        raise ValueError(f"instance {text!r} must look like I/N, e.g. 0/2")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"instance {text!r}: need 0 <= I < N")
    return index, count


#: Room kept in an ``emit`` payload for the run's summary (a Done summary is a few hundred
#: tokens at most); a trigger whose payload leaves less is refused before its run starts.
EMIT_SUMMARY_ROOM = 16 * 1024


def _short(value: Any, width: int = 70) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (RecursionError, TypeError, ValueError):  # nested deeper than this stack allows
        text = f"<{type(value).__name__} too deep to show>"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def describe(event: Any) -> str:
    """A one-line description of a run event, for the status table and the log."""
    p = event.payload if isinstance(event.payload, dict) else {}
    kind = event.event_type
    if kind == RunEventType.TASK:
        return f"task: {_short(p.get('task', ''))}"
    if kind == RunEventType.MODEL_CALL:
        return f"model answered ({p.get('completion_tokens')} tokens)"
    if kind == RunEventType.DECISION:
        return f"decided {_short(p.get('decision', {}))}"
    if kind == RunEventType.TOOL_CALL:
        return f"calling {p.get('tool')}"
    if kind == RunEventType.LLM_CALL:
        return f"tool asked the model ({p.get('completion_tokens')} tokens)"
    if kind == RunEventType.TOOL_RESULT:
        return f"{p.get('tool')} -> {_short(p.get('result', ''))}"
    if kind == RunEventType.ERROR:
        return f"error: {_short(p.get('error', ''))}"
    if kind == RunEventType.OUTCOME:
        return f"outcome {p.get('kind')}: {_short(p.get('summary') or p.get('reason') or '')}"
    return f"published {kind} {_short(event.payload, 50)}"


class FirstDecision:
    """A runtime whose first ``generate`` answers ``decision`` without asking the model.

    Small models (SmolLM2-135M) tend to answer ``done`` before doing anything; a chain agent's
    ``first_tool`` makes the step that matters deterministic. The loop records this answer like
    any other (``run.model_call`` with ``finish_reason: "forced"`` and no completion tokens,
    then ``run.decision``), so resume and ``loopbus replay`` treat it as a recorded decision.
    Every other call goes to the real runtime.
    """

    def __init__(self, runtime: Any, decision: dict[str, Any]) -> None:
        self._runtime = runtime
        self._text = json.dumps(decision)
        self._used = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def generate(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        if self._used:
            return self._runtime.generate(messages, **kwargs)
        from loopbus.models.runtime import Generation

        self._used = True
        return Generation(
            text=self._text,
            prompt_tokens=self._runtime.count_tokens(messages),
            cached_tokens=0,
            completion_tokens=0,
            prefill_s=0.0,
            decode_s=0.0,
            finish_reason="forced",
        )


class AgentWorker:
    """Consumes one agent's subscriptions (one partition) and runs the loop per event."""

    def __init__(
        self,
        config: ChainConfig,
        name: str,
        bus: Any,
        *,
        runtime: Any,
        index: int = 0,
        count: int | None = None,
        status_file: Path | None = None,
        log: Callable[[str], None] | None = None,
        output: Path | None = None,
    ) -> None:
        self.config = config
        self.agent: AgentConfig = config.agent(name)
        self.bus = bus
        self.runtime = runtime
        self.index = index
        self.count = count or self.agent.parallelism
        self.consumer = consumer_name(self.agent.name, index, self.count)
        self.status_file = status_file
        self.log = log or (lambda line: None)
        self.handled = 0
        self.workspace = config.workspace_for(self.agent)
        self.output = output or config.output or default_output(bus.path)
        self._status: dict[str, Any] = {"state": "starting"}
        self.stop = threading.Event()

    # -- status -------------------------------------------------------------------------------
    def set_status(self, **fields: Any) -> None:
        """Update the JSON status file the supervisor reads (atomic rename)."""
        self._status.update(fields)
        if self.status_file is None:
            return
        data = {
            **self._status,
            "pid": os.getpid(),
            "consumer": self.consumer,
            "agent": self.agent.name,
            "handled": self.handled,
            "updated": time.time(),
        }
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.status_file)

    def _on_event(self, event: Any) -> None:
        line = describe(event)
        self.log(f"[{self.consumer}] {event.run_id} #{event.id} {line}")
        self.set_status(activity=line)

    # -- the protocol -------------------------------------------------------------------------
    def owns(self, event_id: int) -> bool:
        """Whether this instance handles ``event_id`` (id partitioning)."""
        return event_id % self.count == self.index

    def resume_unfinished(self) -> int:
        """Resume this partition's runs that have a task but no outcome; returns how many."""
        from loopbus.agents.run.loop import unfinished_runs

        pattern = re.compile(rf"{re.escape(self.agent.name)}-e(\d+)")
        resumed = 0
        for run_id in unfinished_runs(self.bus, self.agent.name):
            match = pattern.fullmatch(run_id)
            if match is None or not self.owns(int(match.group(1))):
                continue  # a `loopbus run` run, or another instance's
            self.set_status(state="resuming", run_id=run_id, event_id=int(match.group(1)))
            self.log(f"[{self.consumer}] resuming {run_id}")
            outcome = self._drive(run_id, None)
            self.log(f"[{self.consumer}] {run_id} resumed -> {outcome.kind}")
            resumed += 1
        return resumed

    def handle(self, event: Any) -> None:
        """Run the loop for one delivered event and commit the cursor past it."""
        if not self.owns(event.id):
            self.bus.ack(self.consumer, event.id)
            return
        run_id = run_id_for(self.agent.name, event.id)
        self.set_status(
            state="running",
            run_id=run_id,
            event_id=event.id,
            event_type=event.event_type,
            activity="",
        )
        task, refusal = self._task(event, run_id)
        outcome = self._drive(run_id, event, task=task, refuse=refusal)
        self._complete(event, run_id, outcome)
        self.handled += 1
        self.set_status(state="idle", run_id=None, event_id=None, activity=f"last: {outcome.kind}")

    def _task(self, event: Any, run_id: str) -> tuple[str, str | None]:
        """The run's task for ``event``, and why the event cannot be handled (None if it can:
        else its run ends failed at once, without a model call)."""
        try:
            task = render_task(self.agent.task, event)
        except (RecursionError, TypeError, ValueError) as exc:
            # A payload the bus stored can still be nested too deep to re-encode here.
            why = f"cannot build the task from the {event.event_type} event {event.id}: {exc}"
            return f"[no task: {why}]", why
        return task, self._refusal(event, run_id)

    def _refusal(self, event: Any, run_id: str) -> str | None:
        """Why ``event`` cannot be handled because of its ``emit``, or None."""
        if self.agent.emit is None:
            return None
        from loopbus.bus.errors import InvalidPayload, PayloadTooLarge
        from loopbus.bus.events import encode_payload

        limit = self._payload_limit()
        room = min(EMIT_SUMMARY_ROOM, limit // 4)  # a bus opened with a small limit
        try:
            encode_payload(self._emit_payload(event, run_id, "failed", None), limit - room)
        except InvalidPayload as exc:
            return f"the {event.event_type} event {event.id} cannot be handled: {exc}"
        except PayloadTooLarge:
            return (
                f"the {event.event_type} event {event.id} is too large to handle: its payload "
                f"leaves less than {room} bytes of the bus's payload limit ({limit} bytes) "
                f"for the {self.agent.emit!r} event this agent emits with its fields"
            )
        return None

    def _payload_limit(self) -> int:
        from loopbus.bus.events import DEFAULT_MAX_PAYLOAD_BYTES

        inner = getattr(self.bus, "bus", self.bus)
        return int(getattr(inner, "max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES))

    def _drive(
        self,
        run_id: str,
        event: Any | None,
        *,
        task: str | None = None,
        refuse: str | None = None,
    ) -> Any:
        """Start (``event`` given) or continue ``run_id`` until its terminal outcome.

        A run already on the bus is resumed by the loop (an ended one just returns its
        outcome). With ``first_tool``, the run's first decision, while none is recorded, is
        that tool (see :class:`FirstDecision`).
        """
        from loopbus.agents.run import loop

        runtime = self.runtime
        if self.agent.first_tool and not self.bus.events(
            run_id=run_id, types=[RunEventType.MODEL_CALL], limit=1
        ):
            runtime = FirstDecision(self.runtime, {"action": self.agent.first_tool})
        if event is None:
            return loop.resume_run(
                run_id,
                runtime=runtime,
                bus=self.bus,
                workspace=self.workspace,
                on_event=self._on_event,
                output=self.output,
            )
        # By its kind (the reference), recorded under the configured name: events and resume
        # go by the name, and the run records the kind so a fresh process finds the agent.
        return loop.run_agent(
            self.agent.kind,
            render_task(self.agent.task, event) if task is None else task,
            runtime=runtime,
            bus=self.bus,
            workspace=self.workspace,
            max_turns=self.agent.max_turns,
            budget=self.agent.budget,
            elide=self.agent.elide,
            run_id=run_id,
            caused_by=event.id,
            on_event=self._on_event,
            output=self.output,
            refuse=refuse,
            name=self.agent.name,
            # [agents.NAME.sandbox]: recorded by the run, so its resumes keep them
            sandbox=self.agent.sandbox_limits(),
        )

    def _emit_payload(
        self, event: Any, run_id: str, kind: str, summary: str | None, *, fields: bool = True
    ) -> dict[str, Any]:
        """The ``emit`` event's payload: the trigger's fields (unless ``fields`` is False) plus
        the trigger, run and outcome."""
        base = event.payload if isinstance(event.payload, dict) else {"value": event.payload}
        return {
            **(base if fields else {}),
            "trigger_id": event.id,
            "trigger_type": event.event_type,
            "run_id": run_id,
            "outcome": kind,
            "summary": summary,
        }

    def _complete(self, event: Any, run_id: str, outcome: Any) -> None:
        from loopbus.bus.errors import InvalidPayload, PayloadTooLarge

        emit = self.agent.emit
        if emit is None or any(
            isinstance(e.payload, dict) and e.payload.get("trigger_id") == event.id
            for e in self.bus.events(run_id=run_id, types=[emit])
        ):
            self.bus.ack(self.consumer, event.id)
            return
        summary = outcome.summary if outcome.summary is not None else outcome.reason
        payload = self._emit_payload(event, run_id, outcome.kind, summary)
        try:
            self._publish_emit(emit, payload, event, run_id)
        except (PayloadTooLarge, InvalidPayload) as exc:
            # Fan-in still needs exactly one emit per trigger: without the trigger's fields
            # (and with a bounded summary), saying why.
            from loopbus.agents.run.state import clip

            small = self._emit_payload(
                event, run_id, outcome.kind, clip(summary or "", 4000), fields=False
            )
            small["fields_dropped"] = clip(f"the trigger's fields were left out: {exc}")
            self._publish_emit(emit, small, event, run_id)

    def _publish_emit(self, emit: str, payload: dict[str, Any], event: Any, run_id: str) -> None:
        with self.bus.transaction() as tx:
            tx.publish(emit, payload, agent=self.agent.name, run_id=run_id, caused_by=event.id)
            tx.ack(self.consumer, event.id)

    def serve(self, *, idle_exit: float | None = None, poll: float = 1.0) -> int:
        """Resume, then consume until :attr:`stop` is set (or idle for ``idle_exit`` seconds).

        Returns the number of events this process handled.
        """
        self.resume_unfinished()
        idle_since = time.monotonic()
        while not self.stop.is_set():
            self.set_status(state="idle", run_id=None, event_id=None)
            # The partition filter skips other instances' ids without delivering them, so
            # the subscription commits past them (and past unmatched types) while idle.
            for event in self.bus.subscribe(
                self.consumer,
                list(self.agent.subscribe),
                timeout=poll,
                partition=(self.index, self.count),
            ):
                self.handle(event)
                idle_since = time.monotonic()
                if self.stop.is_set():
                    break
            if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                break
        self.set_status(state="stopped")
        return self.handled


def default_output(bus_path: str | Path) -> Path:
    """Where chain agents write files by default: the bus file's folder; for a bus on a
    server (a URL), the current directory."""
    from loopbus.bus.store import backend_of, is_url, sqlite_path

    if is_url(str(bus_path)) and backend_of(str(bus_path)) != "sqlite":
        return Path.cwd()
    return Path(sqlite_path(str(bus_path))).resolve().parent


def _watch_parent(parent_pid: int) -> None:
    """Exit when the supervisor is gone (children run in their own session)."""

    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=loop, name="parent-watchdog", daemon=True).start()


def serve_agent(
    config: ChainConfig,
    name: str,
    bus_path: str | Path,
    *,
    instance: tuple[int, int] | None = None,
    status_file: Path | None = None,
    parent_pid: int | None = None,
    idle_exit: float | None = None,
) -> int:
    """Entry point of `loopbus agent`: validate, open the bus, load the model, serve."""
    import loopbus.bus as loopbus
    from loopbus.agents.chains.config import check_registry
    from loopbus.models import load_runtime

    if parent_pid is not None:
        _watch_parent(parent_pid)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    agent = config.agent(name)
    check_registry(config)
    index, count = instance or (0, 1)  # alone, one process handles every event

    def log(line: str) -> None:
        print(line, flush=True)

    output = config.output or default_output(bus_path)
    # One live process per instance (the lease ends with this process, even on SIGKILL):
    # taken before the model loads and before resuming, so a second one changes nothing.
    with (
        loopbus.open(bus_path) as bus,
        bus.lease(consumer_name(agent.name, index, count)),
    ):
        worker = AgentWorker(
            config,
            name,
            bus,
            runtime=None,
            index=index,
            count=count,
            status_file=status_file,
            log=log,
            output=output,
        )
        worker.set_status(state="loading model")
        spec = config.model_for(agent)
        log(f"[{worker.consumer}] pid {os.getpid()} loading model {spec or 'default'}")
        worker.runtime = load_runtime(spec)
        log(f"[{worker.consumer}] subscribed to {', '.join(agent.subscribe)}")
        handled = worker.serve(idle_exit=idle_exit)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return handled
