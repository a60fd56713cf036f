"""The pieces of one turn (:func:`ask_model`, :func:`call_tool`, :func:`finish`) and the two ways a
run's state comes to exist: :func:`new_run` (publishes ``run.task``) and :func:`rebuild` (reads
the run back from the bus for durable resume). :mod:`loopbus.agents.run.loop` composes them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from loopbus.agents.errors import AgentError
from loopbus.agents.observe.runs import RunNotFound, prompt_record
from loopbus.agents.run.decide import (
    Decider,
    DecisionParseError,
    PolicyViolation,
    get_decider,
    prompt_hash,
)
from loopbus.agents.run.events import (
    Decision,
    MalformedRunEvent,
    ModelCall,
    OutcomeEvent,
    RunError,
    RunEventType,
    Task,
    ToolCall,
    ToolResult,
    is_run_event,
    read_payload,
    read_run_event,
)
from loopbus.agents.run.policy import schema_sha, turn_schema, violation
from loopbus.agents.run.state import (
    Outcome,
    PendingCall,
    RunSettings,
    RunState,
    RunUnrecordable,
    clip,
)
from loopbus.agents.tools.core import BusReads, ToolContext, shape_result

log = logging.getLogger("loopbus.agents")

UNKNOWN_OUTCOME = (
    "outcome unknown after crash: the {tool} call was started but its result was never "
    "recorded, so it may or may not have happened; check before repeating it"
)


def finish(
    state: RunState,
    kind: str,
    *,
    summary: str | None = None,
    reason: str | None = None,
    **extra: Any,
) -> Outcome:
    """Record the run's one terminal outcome (a second call returns the first outcome).

    Staged events (the model call and the Done decision) are committed with it.
    """
    if state.outcome is not None:
        return state.outcome
    outcome = Outcome(kind=kind, run_id=state.run_id, summary=summary, reason=reason)  # type: ignore[arg-type]
    payload = {"kind": kind, "summary": summary, "reason": reason, "turns": state.turn, **extra}
    state.emit((RunEventType.OUTCOME, payload, state.origin))
    state.outcome = outcome
    return outcome


def _failure_reason(exc: BaseException) -> str:
    """The outcome reason of a run the model runtime failed (``model error: ...``)."""
    from loopbus.models.errors import ModelError

    if isinstance(exc, ModelError):
        return f"model error: {exc}"
    return f"model error: {type(exc).__name__}: {exc}"


def ask_model(state: RunState, runtime: Any, decider: Decider) -> Outcome | None:
    """One model call: check the budget (eliding if allowed), generate, parse and record.

    Sets ``state.pending`` to the parsed decision, whose ``run.model_call`` and ``run.decision``
    are staged: the dispatch commits them with the tool call or the outcome. An unparseable
    answer is recorded with a short error event the model sees next turn, and ends the run
    after too many in a row.
    """
    from loopbus.models.errors import ModelError

    settings = state.settings
    limit = int(runtime.context_window * settings.budget)
    counts: dict[str, int] = {}
    sha = None
    try:
        while True:
            messages = decider.messages(state.log.render())
            sha = prompt_hash(messages)
            tokens = counts[sha] = runtime.count_tokens(messages)
            if tokens <= limit:
                break
            if not (settings.elide and state.log.elide_oldest()):
                reason = (
                    f"the prompt is {tokens} tokens, over {settings.budget:.0%} of the "
                    f"{runtime.context_window}-token context window ({limit} tokens)"
                )
                return finish(state, "budget_exceeded", reason=reason, counts=counts)
        # The agent's policy narrows the union from the run's state (loopbus.agents.run.policy).
        schema = turn_schema(decider.schema, settings.policy, state.facts, state.workspace_path())
        gen = runtime.generate(
            messages,
            schema=schema if runtime.supports_schema else None,
            max_tokens=settings.max_tokens,
            cache=state.cache,
        )
    except AgentError:
        raise  # the loop's own (a replay divergence): for the caller
    except Exception as exc:  # noqa: BLE001 - the run ends failed, with the reason
        # Any failure of the model runtime ends the run failed, recorded so that a replay
        # raises the same error here. Anything but a ModelError is also logged with its
        # traceback: left to crash the process, a chain agent would resume the run and
        # crash again on every restart.
        if not isinstance(exc, ModelError):
            log.error("model runtime failed in run %s", state.run_id, exc_info=exc)
        error = {"type": type(exc).__name__, "message": str(exc), "prompt_sha256": sha}
        return finish(
            state, "failed", reason=_failure_reason(exc), counts=counts, model_error=error
        )
    state.turn += 1
    call = {
        "turn": state.turn,
        "prompt_sha256": sha,
        "prompt_tokens": tokens,
        "counts": counts,
        "elided": state.log.elided,
        "raw": gen.text,
        "finish_reason": getattr(gen, "finish_reason", None),
        "completion_tokens": getattr(gen, "completion_tokens", None),
        "cached_tokens": getattr(gen, "cached_tokens", None),
        "prefill_s": getattr(gen, "prefill_s", None),
        "decode_s": getattr(gen, "decode_s", None),
    }
    call.update(prompt_record(state, messages))  # the exact prompt, for `loopbus show --prompt`
    if settings.policy.active:  # replay checks this schema was the recorded one
        call["schema_sha256"] = schema_sha(schema)
    try:
        decision = decider.parse(gen.text)
        # Decoding under the schema cannot produce a violation: check only without it.
        if settings.policy.active and not runtime.supports_schema:
            if problem := violation(decision.model_dump(), schema):
                raise PolicyViolation(problem)
    except DecisionParseError as exc:
        state.parse_failures += 1
        error = (
            "your answer was not valid: reply with exactly one JSON object whose action "
            f"is one of: {', '.join(decider.actions())}"
        )
        if isinstance(exc, PolicyViolation):  # say what is allowed this turn
            error = f"your answer was not valid: {exc}"
        call["parse_error"] = str(exc)  # the details stay out of the context
        state.stage(
            (RunEventType.MODEL_CALL, call, None),
            (RunEventType.ERROR, {"turn": state.turn, "kind": "parse", "error": error}, None),
        )
        if state.parse_failures > settings.max_parse_failures:
            return finish(  # the outcome joins the staged events in one commit
                state,
                "failed",
                reason=(
                    f"the model's output did not parse {state.parse_failures} times in a row: {exc}"
                ),
            )
        state.emit()
        return None
    state.parse_failures = 0
    record = {"turn": state.turn, "decision": decision.model_dump(mode="json")}
    # Published with what the decision leads to (tool_call or outcome): one commit per turn
    # before the tool runs (see loopbus.agents.run.state).
    state.stage((RunEventType.MODEL_CALL, call, None), (RunEventType.DECISION, record, None))
    state.pending, state.pending_id = decision, None
    return None


# A tool's own model calls (the sandbox's llm() / summarize()): answer length, and how much of
# the prompt the recording keeps for people reading the bus (its sha256 is what replay checks).
TOOL_LLM_MAX_TOKENS = 256
TOOL_LLM_PROMPT_CHARS = 2000


def tool_llm(state: RunState, runtime: Any, prompt: str) -> str:
    """A model call made by a running tool, recorded as ``run.llm_call`` (caused by the tool
    call) so that a replay answers it from the recording; a runtime error is recorded, then
    raised to the tool (like a tool failure, the model sees it).
    """
    messages = [{"role": "user", "content": str(prompt)}]
    sha = prompt_hash(messages)
    call: dict[str, Any] = {
        "turn": state.turn,
        "prompt_sha256": sha,
        "prompt": str(prompt)[:TOOL_LLM_PROMPT_CHARS],
    }
    caused_by = state.pending_call.event_id if state.pending_call is not None else None
    try:
        gen = runtime.generate(messages, max_tokens=TOOL_LLM_MAX_TOKENS)
    except Exception as exc:
        if isinstance(exc, AgentError):  # a replay divergence: see below
            state.interrupted = exc
            raise
        call["error"] = {"type": type(exc).__name__, "message": str(exc)}
        state.emit((RunEventType.LLM_CALL, call, caused_by))
        raise
    except BaseException as exc:
        # Not the tool's failure (Ctrl-C, a replay divergence): the loop re-raises it after
        # the tool, even if the tool's code catches it (the sandbox hands it to the guest).
        state.interrupted = exc
        raise
    call["raw"] = gen.text
    call["prompt_tokens"] = getattr(gen, "prompt_tokens", None)
    call["completion_tokens"] = getattr(gen, "completion_tokens", None)
    call["finish_reason"] = getattr(gen, "finish_reason", None)
    state.emit((RunEventType.LLM_CALL, call, caused_by))
    return gen.text


def call_tool(state: RunState, decision: BaseModel) -> None:
    """Record the tool call (with the staged decision), run the handler, record its result.

    The call is committed before the handler runs; its result (or error) in a second commit.
    """
    tool = state.ctx.tool_for(decision)  # the run's agent's tool
    args = decision.model_dump(mode="json")
    payload = {"turn": state.turn, "tool": tool.name, "args": args, "idempotent": tool.idempotent}
    event = state.emit((RunEventType.TOOL_CALL, payload, state.pending_id))[-1]
    state.pending = state.pending_id = None
    state.pending_call = PendingCall(event.id, tool.name, args, tool.idempotent)
    _run_handler(state, decision)


def recover_call(state: RunState, decider: Decider) -> None:
    """A tool call recorded before a crash without a result: redo it if idempotent, else say so."""
    call = state.pending_call
    assert call is not None
    if call.idempotent:
        _run_handler(state, decider.load(call.args))
        return
    error = UNKNOWN_OUTCOME.format(tool=call.tool)
    payload = {"turn": state.turn, "kind": "unknown_outcome", "tool": call.tool, "error": error}
    state.emit((RunEventType.ERROR, payload, call.event_id))
    state.pending_call = None


def _run_handler(state: RunState, decision: BaseModel) -> None:
    call = state.pending_call
    assert call is not None
    # By class: a user agent's tool may share its name with a built-in one (loopbus.agents.agent).
    tool = state.ctx.tool_for(decision)  # the run's agent's tool
    base = {"turn": state.turn, "tool": tool.name}
    try:
        if tool.handler is None:
            raise AgentError(f"{tool.name} has no handler")
        result = tool.handler(decision, state.ctx)
    except Exception as exc:  # noqa: BLE001 - a tool failure is information for the model
        if state.interrupted is not None:  # on_event failed on an output the tool published
            raise state.interrupted from None
        message = str(exc) if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
        state.emit((RunEventType.ERROR, {**base, "kind": "tool", "error": message}, call.event_id))
    else:
        if state.interrupted is not None:  # ... and the tool swallowed the exception
            raise state.interrupted
        result = shape_result(result, state.settings.max_result_chars)
        state.emit((RunEventType.TOOL_RESULT, {**base, "result": result}, call.event_id))
    state.pending_call = None


def _attach_context(
    state: RunState, runtime: Any, *, output: Path | None = None, reads: Any = None
) -> None:
    """The run's ToolContext: its workspace, bus reads (``reads``, default the run's own bus),
    its trigger, publishing and model calls through the run (so a recording has every output
    and every answer) and ``output``."""
    state.cache = runtime.new_cache() if hasattr(runtime, "new_cache") else None

    def publish(event_type: str, payload: Any) -> int:
        return state.emit((event_type, payload, state.origin))[0].id

    def publish_many(items: list[tuple[str, Any]]) -> list[int]:
        return [e.id for e in state.emit(*[(t, p, state.origin) for t, p in items])]

    def llm(prompt: str) -> str:
        return tool_llm(state, runtime, prompt)

    state.ctx = ToolContext(
        state.run_id,
        state.settings.agent,
        state.workspace_path(),
        publish=publish,
        runtime=runtime,
        bus=reads if reads is not None else BusReads(state.bus),
        caused_by=state.trigger,
        output=output,
        publish_many=publish_many,
        llm=llm,
        agent_ref=state.settings.agent_ref,
        sandbox=state.settings.sandbox,
    )


def new_run(
    settings: RunSettings,
    task: str,
    *,
    runtime: Any,
    bus: Any,
    run_id: str | None,
    caused_by: int | None,
    on_event: Callable[[Any], None] | None = None,
    stamp: Callable[[int, str], str] | None = None,
    output: Path | None = None,
    reads: Any = None,
    refuse: str | None = None,
) -> RunState:
    """Create a run and publish its ``run.task`` event (the pinned start of its context).

    ``output`` is the tools' output folder; ``reads`` what they read the bus through (a replay
    passes its recorded view; default the run's bus). With ``refuse`` the run ends ``failed``
    with that reason in the same commit as its task (a trigger it cannot handle). A task the
    bus refuses to store ends the run failed too (see :class:`~loopbus.agents.run.state.RunState`).
    """
    run_id = run_id or f"{settings.agent}-{uuid.uuid4().hex[:12]}"
    state = RunState(run_id, task, settings, bus, trigger=caused_by, on_event=on_event, stamp=stamp)
    payload = {"task": task, "settings": settings.model_dump(mode="json")}
    try:
        if refuse is None:
            state.emit((RunEventType.TASK, payload, caused_by))
        else:
            state.stage((RunEventType.TASK, payload, caused_by))
            finish(state, "failed", reason=refuse)
    except RunUnrecordable:
        pass  # state.outcome is the failed outcome, after a stand-in run.task
    _attach_context(state, runtime, output=output, reads=reads)
    return state


def rebuild(
    bus: Any,
    run_id: str,
    *,
    runtime: Any,
    workspace: Path | None = None,
    on_event: Callable[[Any], None] | None = None,
    output: Path | None = None,
) -> tuple[RunState, Decider | None]:
    """The state of ``run_id`` rebuilt from its events on the bus (durable resume).

    A malformed run event (missing keys, wrong types, an unknown decision or outcome kind: a
    forged or corrupt recording) never raises: ``state.malformed`` says what is wrong and the
    events after it are not applied, except a well-formed ``run.outcome`` (the failed outcome
    :func:`loopbus.agents.run.loop.resume_run` records for such a run). The decider is None only when
    the ``run.task`` itself is malformed.
    """
    events = bus.events(run_id=run_id)
    first = next((e for e in events if e.event_type == RunEventType.TASK), None)
    if first is None:
        raise RunNotFound(f"no run {run_id!r} on this bus; `loopbus sql` can list run ids")
    settings, decider, problem = _read_task(first)
    if problem is None and first is not events[0]:  # published with this run id by other means
        problem = f"its {events[0].event_type} (event {events[0].id}) comes before its run.task"
    if settings is None:
        agent = first.agent if isinstance(first.agent, str) and first.agent else "unknown"
        settings = RunSettings(agent=agent, function="")
    elif workspace is not None:
        settings = settings.model_copy(update={"workspace": str(workspace)})
    task = first.payload.get("task") if isinstance(first.payload, dict) else None
    state = RunState(
        run_id,
        task if isinstance(task, str) else "",
        settings,
        bus,
        trigger=first.caused_by,
        task_event_id=first.id,
        on_event=on_event,
    )
    for event in events if problem is None else events[events.index(first) + 1 :]:
        if problem is not None:
            if (recorded := _recorded_outcome(run_id, event)) is not None:
                state.outcome = recorded
                break
            continue
        problem = _apply(state, decider, event)  # type: ignore[arg-type]
    if state.outcome is None and problem is not None:
        state.malformed = clip(f"cannot resume run {run_id}: {problem}")
    _attach_context(state, runtime, output=output)
    return state, decider


def _outcome(run_id: str, event: OutcomeEvent) -> Outcome:
    return Outcome(kind=event.kind, run_id=run_id, summary=event.summary, reason=event.reason)


def _recorded_outcome(run_id: str, event: Any) -> Outcome | None:
    """The outcome a well-formed ``run.outcome`` event records, else None."""
    if event.event_type != RunEventType.OUTCOME:
        return None
    try:
        return _outcome(run_id, read_payload(OutcomeEvent, event.payload))
    except MalformedRunEvent:
        return None


def _read_task(first: Any) -> tuple[RunSettings | None, Decider | None, str | None]:
    """(settings, decider, problem) of a run's ``run.task`` event."""
    where = f"its run.task (event {first.id})"
    try:
        task = read_payload(Task, first.payload)
    except MalformedRunEvent as exc:
        return None, None, f"{where} is malformed: {exc.problem}"
    try:
        settings = RunSettings.model_validate(task.settings)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        return None, None, f"{where} is malformed: settings.{loc}: {err['msg']}"
    try:
        decider = get_decider(settings.function)
    except Exception as exc:  # noqa: BLE001 - any lookup failure means the run cannot go on
        return settings, None, f"{where} names no known BAML function: {clip(str(exc), 200)}"
    return settings, decider, None


def _apply(state: RunState, decider: Decider, event: Any) -> str | None:
    """Apply one recorded event to ``state``; what is malformed about it, or None."""
    kind = event.event_type
    where = f"its {kind} (event {event.id})"
    if kind == RunEventType.TASK and event.id != state.task_event_id:
        return f"{where} is a second {RunEventType.TASK}"
    typed = None  # another type (a tool's output): only observed
    decision: BaseModel | None = None
    if is_run_event(kind):
        try:
            typed = read_run_event(event)
        except MalformedRunEvent as exc:
            return f"{where} is malformed: {exc.problem}"
    try:
        if isinstance(typed, Decision):
            decision = decider.load(typed.decision)
        elif isinstance(typed, ToolCall):
            decider.load(typed.args)  # what recover_call will run
    except (DecisionParseError, ValidationError) as exc:
        return f"{where} holds an unknown decision: {clip(str(exc).splitlines()[0], 200)}"
    state.observe(event)
    pending = state.pending_call
    match typed:
        case ModelCall():
            state.turn = typed.turn
        case Decision():
            state.pending, state.pending_id, state.parse_failures = decision, event.id, 0
        case RunError(kind="parse"):
            state.parse_failures += 1
        case ToolCall():
            state.pending = state.pending_id = None
            state.pending_call = PendingCall(event.id, typed.tool, typed.args, typed.idempotent)
        case ToolResult() | RunError() if (
            pending is not None and event.caused_by == pending.event_id
        ):
            state.pending_call = None
        case OutcomeEvent() if state.outcome is None:
            state.outcome = _outcome(state.run_id, typed)
    return None
