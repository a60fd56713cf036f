"""Record and replay: export a run as a self-contained XML recording, re-run it without a model.

A recording is the run's events (from the bus, or an exported file)::

    <?xml version="1.0" encoding="utf-8"?>
    <recording format="loopbus-run/1" run_id="assistant-1a2b" agent="assistant">
    <event type="run.task" ts="..." id="1">{"task":"...","settings":{...}}</event>
    <event type="run.model_call" ts="..." id="2">{"raw":"...","prompt_sha256":"...",...}</event>
    ...
    </recording>

Event bodies use the event log's injection-safe JSON, so the file is well-formed XML. The
``run.task`` settings (agent, BAML function, limits, context window) and the token counts of
every prompt (``counts`` in ``run.model_call`` / ``run.outcome``) make it replayable without the
model or its tokenizer.

Runs whose tools read the bus (chain agents) also need what they read: the event that
triggered the run, and the events of the types their tools declare in ``reads`` (committed
before the run's last tool call). Those come first, marked ``context="1"`` and with their own
``agent`` / ``run_id`` / ``caused_by``; such a file says ``format="loopbus-run/2"`` (older
readers refuse it instead of misreading it). Files without context stay ``loopbus-run/1``.

:func:`replay` re-runs the loop on a scratch bus with :class:`ReplayRuntime`, which returns the
recorded raw outputs (and checks each prompt's sha256), re-executes the tools, and compares every
event the loop publishes with the recording; the first divergence becomes a readable diff. The
tools read the bus through :class:`RecordedReads` (the context plus the run's own replayed
events, under their recorded ids, as the bus looked when each tool ran) and write into a scratch
output folder. Events after ``run.outcome`` (an agent process's ``emit``) are not the loop's and
are not compared.

The recording itself (its format, parsing and the checks it must pass as input) is
:mod:`loopbus.agents.run.recording`; its names are re-exported here.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from loopbus.agents.errors import AgentError
from loopbus.agents.run.decide import prompt_hash
from loopbus.agents.run.events import (
    LlmCall,
    ModelCall,
    OutcomeEvent,
    RunEventType,
    is_run_event,
    read_run_event,
)
from loopbus.agents.run.recording import (  # the recording format, re-exported: `loopbus.agents.run.replay` names
    FORMAT,
    FORMAT_WITH_CONTEXT,
    RecordedEvent,
    Recording,
    check_function,
    decision_functions,
    export_run,
    load_recording,
)
from loopbus.agents.run.replay_context import RecordedReads
from loopbus.agents.run.state import Outcome

__all__ = [
    "FORMAT",
    "FORMAT_WITH_CONTEXT",
    "Checker",
    "RecordedEvent",
    "Recording",
    "ReplayDivergence",
    "ReplayGeneration",
    "ReplayReport",
    "ReplayRuntime",
    "check_function",
    "decision_functions",
    "essence",
    "export_run",
    "load_recording",
    "prepare",
    "replay",
]


class ReplayDivergence(AgentError):
    """The replayed run differs from its recording; the message is the readable diff."""


@dataclass
class ReplayGeneration:
    """The shape of ``models.Generation`` the loop reads, filled from the recording."""

    text: str
    prompt_tokens: int
    finish_reason: str | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    prefill_s: float | None = None
    decode_s: float | None = None


class ReplayRuntime:
    """A model runtime that answers with a recording's raw outputs; no model is loaded.

    Answers come back in the recorded order: the loop's decisions (``run.model_call``) and the
    tools' own calls (``run.llm_call``, the sandbox's ``llm()``); a prompt whose sha256 differs
    from the recorded one is a divergence, and a tool's call that failed raises its error again.
    Token counts come from the recording (looked up by prompt sha256), so the budget check needs
    no tokenizer. A run that ended ``failed`` on a runtime error (``model_error`` in its
    ``run.outcome``) gets the same error (same class name, same message) at the same point.
    """

    def __init__(self, recording: Recording) -> None:
        settings = recording.settings
        self.spec = f"replay:{recording.run_id}"
        self.context_window = settings.context_window
        self.supports_schema = settings.supports_schema
        # A checked recording (Recording.checked): its run events read back.
        typed = [
            read_run_event(e.type, e.payload) for e in recording.events if is_run_event(e.type)
        ]
        # (whether it is a decision, the recorded call), in order
        self.calls: list[tuple[bool, ModelCall | LlmCall]] = [
            (isinstance(e, ModelCall), e) for e in typed if isinstance(e, ModelCall | LlmCall)
        ]
        self.turns = 0  # decisions answered (tools' own calls not counted)
        self.counts: dict[str, int] = {}
        self.failure: dict[str, Any] | None = None  # the model error that ended the run
        for e in typed:
            if isinstance(e, ModelCall | OutcomeEvent):
                self.counts.update(e.counts or {})
            if isinstance(e, OutcomeEvent) and isinstance(e.model_error, dict):
                self.failure = e.model_error
        self.used = 0

    def _hash(self, messages: list[dict[str, Any]]) -> str:
        # The loop hashes the same list first: prompt_hash remembers it (no second pass).
        return prompt_hash(messages)

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        sha = self._hash(messages)
        if sha not in self.counts:
            if self.used >= len(self.calls):
                # The recorded run may have failed right here (a tokenizer error).
                raise self._fail(messages) if self.failure is not None else self._exhausted()
            raise ReplayDivergence(
                f"replay diverged before model call {self.used + 1}: the prompt hash "
                f"{sha[:16]} is not in the recording, so the prompt template or the context "
                "changed"
            )
        return self.counts[sha]

    def count_text(self, text: str) -> int:
        raise AgentError("a replay runtime has no tokenizer")

    def new_cache(self) -> object | None:
        return None

    def _exhausted(self) -> ReplayDivergence:
        return ReplayDivergence(
            f"replay diverged: it asked the model {self.used + 1} times, the recording has "
            f"only {len(self.calls)} model calls"
        )

    def _fail(self, messages: list[dict[str, Any]]) -> Exception:
        """The recorded model error, raised where the recorded run's model call failed."""
        failure = self.failure
        assert failure is not None
        sha = self._hash(messages)
        if sha != failure.get("prompt_sha256"):
            return ReplayDivergence(
                f"replay diverged at model call {self.used + 1}, the one that failed with "
                f"{failure.get('type')}: prompt hash changed\n"
                f"  recorded: {failure.get('prompt_sha256')}\n  replayed: {sha}\n"
                "the prompt template (baml_src) or the context changed"
            )
        return _model_error(failure)

    def generate(
        self, messages: list[dict[str, Any]], schema: dict[str, Any] | None = None, **_: Any
    ) -> ReplayGeneration:
        if self.used >= len(self.calls):
            if self.failure is not None:
                raise self._fail(messages)
            raise self._exhausted()
        decision, call = self.calls[self.used]
        self.used += 1
        if isinstance(call, ModelCall) and schema is not None:
            _check_schema(call, schema)
        sha = self._hash(messages)
        if sha != call.prompt_sha256:
            what = (
                "the prompt template (baml_src) or the context changed"
                if decision
                else "this call came from a tool (run.llm_call): its prompt changed, or the "
                "tool asked where the recording has a decision"
            )
            raise ReplayDivergence(
                f"replay diverged at model call {self.used} (turn {call.turn}): prompt "
                f"hash changed\n  recorded: {call.prompt_sha256}\n  replayed: {sha}\n" + what
            )
        if decision:
            self.turns += 1
        elif isinstance(call, LlmCall) and isinstance(call.error, dict):
            raise _model_error(call.error)
        return ReplayGeneration(
            call.raw,
            call.prompt_tokens or 0,
            call.finish_reason,
            call.completion_tokens,
        )


def _check_schema(call: ModelCall, schema: dict[str, Any]) -> None:
    """The replayed turn's decoding schema (loopbus.agents.run.policy) is the recorded one, and the
    recorded decision is allowed by it; ReplayDivergence otherwise."""
    from loopbus.agents.run.policy import schema_sha, violation

    recorded = call.schema_sha256
    if recorded is None:  # recorded without a policy: the static union, nothing to check
        return
    turn = call.turn
    if schema_sha(schema) != recorded:
        raise ReplayDivergence(
            f"replay diverged at turn {turn}: the decoding schema changed\n"
            f"  recorded: {recorded}\n  replayed: {schema_sha(schema)}\n"
            "the agent's policy, the workspace's files or the decision types differ"
        )
    try:
        decision = json.loads(call.raw or "")
    except json.JSONDecodeError:
        return  # not a decision: the loop records the parse error as it did then
    if isinstance(decision, dict) and (problem := violation(decision, schema)):
        raise ReplayDivergence(
            f"replay diverged at turn {turn}: the recorded decision is not allowed by the "
            f"policy's schema for that turn: {problem}"
        )


def _model_error(recorded: dict[str, Any]) -> Exception:
    """The exception a recording names: its ``loopbus.models.errors`` class, else (a runtime failure
    that was not a ModelError, such as a ValueError) a stand-in class of that name, so that
    the replayed run records the same failure."""
    from loopbus.models import errors

    name = str(recorded.get("type"))
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.ModelError)):
        cls = type(name, (RuntimeError,), {}) if name.isidentifier() else errors.ModelError
    return cls(recorded.get("message", ""))


# What must match in a replay, per run event type (see essence).
_ESSENCE: dict[str, tuple[str, ...]] = {
    RunEventType.TASK: ("task",),
    RunEventType.MODEL_CALL: ("turn", "prompt_sha256", "prompt_tokens", "elided", "raw"),
    RunEventType.DECISION: ("turn", "decision"),
    RunEventType.TOOL_CALL: ("turn", "tool", "args"),
    RunEventType.TOOL_RESULT: ("turn", "tool", "result"),
    RunEventType.LLM_CALL: ("turn", "prompt_sha256", "raw", "error"),
    RunEventType.ERROR: ("turn", "kind", "tool", "error"),
    RunEventType.OUTCOME: ("kind", "summary", "reason", "turns", "model_error"),
}


def essence(event_type: str, payload: Any) -> Any:
    """The parts of an event that must match in a replay (not timings, ids or paths)."""
    keep = _ESSENCE.get(event_type)
    if keep is None or not isinstance(payload, dict):
        return payload
    return {key: payload.get(key) for key in keep}


def _diff(index: int, total: int, recorded: RecordedEvent | None, replayed: Any) -> str:
    def show(kind: str | None, payload: Any) -> list[str]:
        if kind is None:
            return ["(no event)"]
        text = json.dumps(
            {"type": kind, **{"payload": essence(kind, payload)}},
            indent=2,
            sort_keys=True,
            ensure_ascii=False,
        )
        return text.splitlines()

    old = show(recorded.type, recorded.payload) if recorded else show(None, None)
    new = show(replayed.event_type, replayed.payload) if replayed else show(None, None)
    where = recorded.type if recorded else replayed.event_type
    turn = (recorded.payload if recorded else replayed.payload) or {}
    turn_text = f", turn {turn['turn']}" if isinstance(turn, dict) and "turn" in turn else ""
    head = f"replay diverged at event {index + 1} of {total} ({where}{turn_text}):"
    body = difflib.unified_diff(old, new, "recorded", "replayed", lineterm="", n=2)
    return "\n".join([head, *body])


class Checker:
    """Compares each replayed event with the recording, in order; raises on the first mismatch."""

    def __init__(self, recording: Recording) -> None:
        self.expected = recording.loop_events
        self.seen = 0

    def __call__(self, event: Any) -> RecordedEvent:
        """The recorded event ``event`` matches; ReplayDivergence (the diff) when none does."""
        index = self.seen
        self.seen += 1
        recorded = self.expected[index] if index < len(self.expected) else None
        if (
            recorded is None
            or recorded.type != event.event_type
            or essence(recorded.type, recorded.payload) != essence(event.event_type, event.payload)
        ):
            raise ReplayDivergence(_diff(index, len(self.expected), recorded, event))
        return recorded

    def stamp(self, index: int, event_type: str) -> str:
        """The recorded timestamp of the index-th event (prompts then hash the same)."""
        if index < len(self.expected) and self.expected[index].type == event_type:
            recorded = self.expected[index]
            if isinstance(recorded.payload, dict) and "ts" in recorded.payload:
                return recorded.payload["ts"]
            return recorded.ts
        from loopbus.agents.run.state import utc_now

        return utc_now()

    def finish(self) -> None:
        if self.seen < len(self.expected):
            raise ReplayDivergence(
                _diff(self.seen, len(self.expected), self.expected[self.seen], None)
            )


class ReplayReport(BaseModel):
    """The result of :func:`replay`: ``ok`` or the first divergence as a diff."""

    ok: bool
    run_id: str
    turns: int  # decisions answered from the recording
    model_calls: int = 0  # every answer from the recording, tools' own calls included
    diff: str | None = None
    outcome: Outcome | None = None


def prepare(
    recording: Recording,
    bus: Any,
    *,
    workspace: Path | None = None,
    on_event: Callable[[Any], None] | None = None,
    output: Path | None = None,
) -> tuple[Any, Any, Any, Checker]:
    """(state, runtime, decider, checker) ready for :func:`loopbus.agents.run.loop.run` on ``bus``.

    The tools read the bus through :class:`RecordedReads` and write into ``output``.
    """
    from loopbus.agents.builtin import get_agent
    from loopbus.agents.run import turn
    from loopbus.agents.run.decide import get_decider

    check_function(recording)
    settings = recording.settings
    get_agent(settings.agent_ref or settings.agent)  # UnknownAgent before anything runs
    if workspace is not None:
        settings = settings.model_copy(update={"workspace": str(Path(workspace).resolve())})
    elif settings.workspace and not Path(settings.workspace).is_dir():
        raise AgentError(
            f"the recorded workspace {settings.workspace} does not exist here; "
            "pass the folder to re-run the tools on (--workspace DIR)"
        )
    runtime, checker, reads = ReplayRuntime(recording), Checker(recording), RecordedReads(recording)

    def observe(event: Any) -> None:
        reads.add(event, checker(event))
        if on_event is not None:
            on_event(event)

    state = turn.new_run(
        settings,
        recording.task,
        runtime=runtime,
        bus=bus,
        run_id=recording.run_id,
        caused_by=recording.task_event.caused_by,
        on_event=observe,
        stamp=checker.stamp,
        output=output,
        reads=reads,
    )
    return state, runtime, get_decider(settings.function), checker


def replay(
    recording: Recording,
    *,
    workspace: Path | None = None,
    on_event: Callable[[Any], None] | None = None,
    output: Path | None = None,
) -> ReplayReport:
    """Re-run ``recording`` on a scratch bus with recorded model outputs and real tools.

    Writing tools write into ``output`` (default: a scratch folder, removed afterwards).
    """
    from loopbus.agents.run.loop import run
    from loopbus.bus import SyncBus

    with tempfile.TemporaryDirectory(prefix="loopbus-replay-") as tmp:
        scratch = Path(tmp) / "output"
        scratch.mkdir()
        with SyncBus(Path(tmp) / "replay.db", synchronous="NORMAL") as bus:
            runtime = None
            try:
                state, runtime, decider, checker = prepare(
                    recording,
                    bus,
                    workspace=workspace,
                    on_event=on_event,
                    output=output if output is not None else scratch,
                )
                outcome = run(state, runtime, decider)
                checker.finish()
            except ReplayDivergence as exc:
                turns, calls = (runtime.turns, runtime.used) if runtime is not None else (0, 0)
                return ReplayReport(
                    ok=False, run_id=recording.run_id, turns=turns, model_calls=calls, diff=str(exc)
                )
            return ReplayReport(
                ok=True,
                run_id=recording.run_id,
                turns=runtime.turns,
                model_calls=runtime.used,
                outcome=outcome,
            )
